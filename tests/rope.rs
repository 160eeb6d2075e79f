//! RoPE on every adapter against the f64 oracle: both pairings, head dims 64, 2 and 6, pos0 > 0.

mod common;
use common::*;
use revive::cpu;
use revive::gpu::{Gpu, SplitLimits};
use revive::model::{Rope, RopeStyle};
use revive::ops::rope::{rope, rope_pair};

fn check(gpu: &Gpu, shape: [usize; 4], pos0: usize, theta: f32, seed: u64) -> Result<(), String> {
    check_tol(gpu, shape, pos0, theta, seed, Tolerance::F32)
}

fn check_tol(gpu: &Gpu, shape: [usize; 4], pos0: usize, theta: f32, seed: u64, tol: Tolerance) -> Result<(), String> {
    check_freqs(gpu, shape, pos0, &Rope::plain(theta as f64, shape[3], RopeStyle::Half).inv_freq, seed, tol)
}

/// The kernel against the oracle with these frequencies, both pairings.
fn check_freqs(gpu: &Gpu, shape: [usize; 4], pos0: usize, inv_freq: &[f64], seed: u64, tol: Tolerance) -> Result<(), String> {
    let mut r = rng(seed);
    let x = random_vec(&mut r, shape.iter().product());
    let tx = ok(gpu.upload(&x, &shape))?;
    for style in [RopeStyle::Adjacent, RopeStyle::Half] {
        let rot = Rope { style, inv_freq: inv_freq.to_vec() };
        let got = ok(gpu.download(&ok(rope(gpu, &tx, pos0, &rot))?))?;
        let want = cpu::rope(&x, shape, pos0, &rot);
        compare(&format!("rope {style:?} {shape:?} pos0={pos0}"), &got, &want, tol)?;
    }
    Ok(())
}

/// Unscaled RoPE with SmolLM2's base over heads of d.
fn plain(d: usize, style: RopeStyle) -> Rope {
    Rope::plain(10_000.0, d, style)
}

#[test]
fn rope_matches_oracle() {
    for_each_gpu(|gpu| {
        // The f32 angle pos * inv_freq is off by at most pos * 2^-23 rad (product and inv_freq
        // roundings), under 1e-5 while positions stay below 80.
        let cases: &[([usize; 4], usize, f32)] = &[
            ([1, 1, 1, 2], 3, 10_000.0),
            ([2, 13, 9, 64], 0, 100_000.0),
            ([2, 13, 3, 64], 7, 10_000.0),
            ([1, 1, 9, 64], 60, 10_000.0),
            ([3, 5, 7, 6], 11, 10_000.0),
            ([2, 31, 1, 2], 1, 500.0),
            ([1, 17, 5, 128], 40, 1_000_000.0),
        ];
        for (i, &(shape, pos0, theta)) in cases.iter().enumerate() {
            check(gpu, shape, pos0, theta, 300 + i as u64)?;
        }
        // A decode step deep into a long context: positions near 4096 allow 4096 * 2^-23 = 5e-4
        // rad of angle error, the inherent cost of f32 angles (Hugging Face's are f32 too).
        check_tol(gpu, [1, 1, 9, 64], 4095, 10_000.0, 310, Tolerance::new(1e-3, 1e-5, 1e-3))?;
        Ok(())
    });
}

/// Scaled frequencies (Llama 3.1's rule, linear, a GGUF's divisors) are what the kernels get
/// from the host: any table turns each pair at its own rate. A table of the wrong length is
/// refused, naming the count.
#[test]
fn scaled_frequencies_match_the_oracle() {
    use revive::model::{Config, RopeScaling};
    let llama3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };
    let divisors = RopeScaling::Divisors((0..32).map(|i| 1.0 + (i % 5) as f32 * 0.75).collect());
    for_each_gpu(|gpu| {
        for (i, scaling) in [llama3.clone(), RopeScaling::Linear { factor: 4.0 }, divisors.clone()].into_iter().enumerate() {
            let config = Config { head_dim: 64, rope_theta: 500_000.0, rope_scaling: scaling.clone(), ..Config::tiny_llama() };
            let freqs = config.rope().inv_freq;
            if freqs == Rope::plain(500_000.0, 64, RopeStyle::Half).inv_freq {
                return Err(format!("{scaling:?} left the frequencies as they were"));
            }
            check_freqs(gpu, [2, 7, 3, 64], 9, &freqs, 700 + i as u64, Tolerance::F32)?;
        }
        let x = ok(gpu.upload(&[0.0; 8], &[1, 1, 1, 8]))?;
        let err = rope(gpu, &x, 0, &plain(6, RopeStyle::Half)).err().ok_or("3 frequencies for heads of 8 accepted")?.to_string();
        if !err.contains("3 RoPE frequencies") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

#[test]
fn rope_splits_rows_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        // Each dispatch covers at most 3 * 256 pairs (24 rows of 64), so 2*13*3 rows take several.
        check(gpu, [2, 13, 3, 64], 5, 10_000.0, 400)?;
        // More rows than workgroups x threads when rows are tiny: the token index must follow row0.
        check(gpu, [2, 500, 2, 6], 3, 10_000.0, 401)
    });
}

#[test]
fn rope_rejects_odd_head_dim() {
    for_each_gpu(|gpu| {
        let x = ok(gpu.upload(&[0.0; 15], &[1, 1, 3, 5]))?;
        let err = rope(gpu, &x, 0, &plain(5, RopeStyle::Half)).err().ok_or("odd head dim accepted")?;
        if !err.to_string().contains("even") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// Queries and keys rotated in one dispatch: the oracle's rotation of each, and the same bits as
/// two `rope` calls; at a 3-workgroup dispatch limit (two dispatches then) too. Head counts
/// 9/3 (SmolLM2), 5/1 and 2/2, both pairings, pos0 > 0.
#[test]
fn queries_and_keys_rotated_together_match_the_oracle() {
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (b, t, hq, hk, d, pos0) in [(2, 13, 9, 3, 64, 7), (1, 1, 5, 1, 6, 40), (3, 5, 2, 2, 2, 0)] {
            for g in [gpu, &small] {
                let mut r = rng((b * t * hq + pos0) as u64);
                let (q, k) = (random_vec(&mut r, b * t * hq * d), random_vec(&mut r, b * t * hk * d));
                let (tq, tk) = (ok(g.upload(&q, &[b, t, hq, d]))?, ok(g.upload(&k, &[b, t, hk, d]))?);
                for style in [RopeStyle::Adjacent, RopeStyle::Half] {
                    let (qo, ko) = ok(rope_pair(g, &tq, &tk, pos0, &plain(d, style)))?;
                    for (name, x, h, got, alone) in [("q", &q, hq, &qo, &tq), ("k", &k, hk, &ko, &tk)] {
                        let got = ok(g.download(got))?;
                        let label = format!("rope_pair {name} {style:?} [{b}, {t}, {h}, {d}] pos0={pos0} ({})", g.label());
                        compare(&label, &got, &cpu::rope(x, [b, t, h, d], pos0, &plain(d, style)), Tolerance::F32)?;
                        let one = ok(g.download(&ok(rope(g, alone, pos0, &plain(d, style)))?))?;
                        if got.iter().zip(&one).any(|(a, b)| a.to_bits() != b.to_bits()) {
                            return Err(format!("{label}: not the bits of rope alone"));
                        }
                    }
                }
            }
        }
        Ok(())
    });
}

/// A layer's queries rotated, keys rotated into their cache and values copied into theirs in
/// one dispatch (`rope_kv`): the oracle's rotations at the right cache rows, every other cache
/// entry left as it was (the caches start as NaN), for q/k/v given as views into one stacked
/// buffer 3 elements off a binding boundary (a decoded token's stacked product) and as tensors
/// of their own; at a 1-workgroup dispatch limit too (the separate kernels then, wherever 256
/// threads cannot cover the work: the SmolLM2-shaped cases). Head counts 9/3 (SmolLM2), 5/1 and 2/2, several sequences,
/// prompts and single tokens, pos0 > 0.
#[test]
fn rope_kv_rotates_into_the_caches_like_the_oracle() {
    use revive::ops::rope::rope_kv;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 1, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (b, t, hq, hk, d, pos0, cap) in [(1, 1, 9, 3, 64, 5, 8), (2, 13, 9, 3, 64, 7, 23), (1, 1, 5, 1, 6, 40, 41), (3, 5, 2, 2, 2, 0, 6)] {
            let (nq, nk) = (b * t * hq * d, b * t * hk * d);
            let mut r = rng((b * t * hq + pos0) as u64);
            let data = random_vec(&mut r, 3 + nq + 2 * nk);
            let (q, k, v) = (&data[3..3 + nq], &data[3 + nq..3 + nq + nk], &data[3 + nq + nk..]);
            for g in [gpu, &small] {
                let whole = ok(g.upload(&data, &[data.len()]))?;
                let views = [ok(whole.view(3, &[b, t, hq, d]))?, ok(whole.view(3 + nq, &[b, t, hk, d]))?, ok(whole.view(3 + nq + nk, &[b, t, hk, d]))?];
                let own = [ok(g.upload(q, &[b, t, hq, d]))?, ok(g.upload(k, &[b, t, hk, d]))?, ok(g.upload(v, &[b, t, hk, d]))?];
                for (layout, [tq, tk, tv]) in [("views", &views), ("tensors", &own)] {
                    for style in [RopeStyle::Adjacent, RopeStyle::Half] {
                        let label = format!("rope_kv {style:?} {layout} [{b}, {t}, {hq}/{hk}, {d}] pos0={pos0} ({})", g.label());
                        let kc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                        let vc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                        let qo = ok(rope_kv(g, tq, tk, tv, &kc, &vc, pos0, &plain(d, style)))?;
                        compare(&format!("{label} q"), &ok(g.download(&qo))?, &cpu::rope(q, [b, t, hq, d], pos0, &plain(d, style)), Tolerance::F32)?;
                        let rk = cpu::rope(k, [b, t, hk, d], pos0, &plain(d, style));
                        let vv: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                        for (name, cache, want) in [("k cache", &kc, &rk), ("v cache", &vc, &vv)] {
                            let got = ok(g.download(cache))?;
                            let mut written = vec![];
                            let mut wanted = vec![];
                            for (i, &x) in got.iter().enumerate() {
                                let (row, col) = (i / d, i % d);
                                let (s, h, bi) = (row % cap, (row / cap) % hk, row / (cap * hk));
                                if (pos0..pos0 + t).contains(&s) {
                                    written.push(x);
                                    wanted.push(want[((bi * t + s - pos0) * hk + h) * d + col]);
                                } else if !x.is_nan() {
                                    return Err(format!("{label}: {name} entry {i} (row {s}) written: {x}"));
                                }
                            }
                            compare(&format!("{label} {name}"), &written, &wanted, Tolerance::F32)?;
                        }
                    }
                }
            }
        }
        Ok(())
    });
}

/// One token per sequence, each at its own position (`rope_kv_at` with `At::Each`): sequence s's
/// query rotated by its position, its key rotated into row positions[s] of its own cache block
/// and its value copied there; every other cache entry untouched (NaN). 1, 3 and 21 sequences
/// (21: two dispatches of the kernel's 16), views 3 elements off a binding boundary; at a
/// 1-workgroup dispatch limit too (a sequence at a time through the separate kernels); and the
/// positions refused where they are not one per sequence of one token or past the cache.
#[test]
fn rope_kv_at_each_sequences_own_position_matches_the_oracle() {
    use revive::ops::rope::rope_kv_at;
    use revive::ops::At;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 1, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (b, hq, hk, d, cap) in [(1, 9, 3, 64, 8), (3, 5, 1, 6, 41), (21, 2, 2, 4, 30)] {
            let (nq, nk) = (b * hq * d, b * hk * d);
            let mut r = rng((b * hq * d + cap) as u64);
            let data = random_vec(&mut r, 3 + nq + 2 * nk);
            let (q, k, v) = (&data[3..3 + nq], &data[3 + nq..3 + nq + nk], &data[3 + nq + nk..]);
            // Positions spread over the cache, its last row among them.
            let positions: Vec<usize> = (0..b).map(|s| if s == 0 { cap - 1 } else { (s * 7 + 3) % cap }).collect();
            for g in [gpu, &small] {
                let whole = ok(g.upload(&data, &[data.len()]))?;
                let (tq, tk, tv) = (ok(whole.view(3, &[b, 1, hq, d]))?, ok(whole.view(3 + nq, &[b, 1, hk, d]))?, ok(whole.view(3 + nq + nk, &[b, 1, hk, d]))?);
                for style in [RopeStyle::Adjacent, RopeStyle::Half] {
                    let label = format!("rope_kv_at each {style:?} [{b}, 1, {hq}/{hk}, {d}] cap {cap} ({})", g.label());
                    let kc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                    let vc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                    let qo = ok(g.download(&ok(rope_kv_at(g, &tq, &tk, &tv, &kc, &vc, At::Each(&positions), &plain(d, style)))?))?;
                    let (gk, gv) = (ok(g.download(&kc))?, ok(g.download(&vc))?);
                    for (s, &pos) in positions.iter().enumerate() {
                        let want_q = cpu::rope(&q[s * hq * d..(s + 1) * hq * d], [1, 1, hq, d], pos, &plain(d, style));
                        compare(&format!("{label} q of seq {s} at {pos}"), &qo[s * hq * d..(s + 1) * hq * d], &want_q, Tolerance::F32)?;
                        let want_k = cpu::rope(&k[s * hk * d..(s + 1) * hk * d], [1, 1, hk, d], pos, &plain(d, style));
                        for (name, got, want) in [("k", &gk, want_k), ("v", &gv, v[s * hk * d..(s + 1) * hk * d].iter().map(|&x| x as f64).collect())] {
                            let block = &got[s * hk * cap * d..(s + 1) * hk * cap * d];
                            let mut written = vec![];
                            for (i, &x) in block.iter().enumerate() {
                                if (i / d) % cap == pos {
                                    written.push(x);
                                } else if !x.is_nan() {
                                    return Err(format!("{label}: {name} cache of seq {s}: entry {i} (row {}) written: {x}", (i / d) % cap));
                                }
                            }
                            compare(&format!("{label} {name} cache of seq {s} at {pos}"), &written, &want, Tolerance::F32)?;
                        }
                    }
                }
                let kc = ok(g.full(&[b, hk, cap, d], 0.0))?;
                let mut past = positions.clone();
                past[b - 1] = cap;
                rope_kv_at(g, &tq, &tk, &tv, &kc, &kc, At::Each(&past), &plain(d, RopeStyle::Half)).err().ok_or(format!("{b} sequences: a position past the cache accepted"))?;
                rope_kv_at(g, &tq, &tk, &tv, &kc, &kc, At::Each(&positions[1..]), &plain(d, RopeStyle::Half)).err().ok_or(format!("{b} sequences: {} positions accepted", b - 1))?;
            }
        }
        Ok(())
    });
}

/// A few rows' attention norm, stacked q/k/v product, rotation and cache write in one dispatch
/// (`norm_qkv_rope_kv`) against the f64 oracle composed of the same steps (rms_norm, the
/// product, the rotation per head): the rotated queries, the keys and values at their cache
/// rows, every other cache entry untouched (NaN). One row; two sequences of three tokens from
/// pos0 > 0; three sequences at their own positions; SmolLM2's 9/3 heads of 64 and small odd
/// shapes (2/1 heads of 6, 4/4 of 2); both pairings; and at a 1-workgroup dispatch limit (the
/// separate norm-product and rotation then).
#[test]
fn norm_qkv_rope_kv_matches_the_composed_oracle() {
    use revive::ops::rope::{norm_qkv_rope_kv, Heads};
    use revive::ops::At;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 1, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        let (theta, eps) = (10_000.0f32, 1e-5f32);
        for (ci, &(b, t, hq, hk, d, cols, cap)) in [(1, 1, 9, 3, 64, 576, 9), (2, 3, 2, 1, 6, 13, 8), (3, 1, 4, 4, 2, 7, 6), (1, 1, 1, 1, 4, 1, 1)].iter().enumerate() {
            let rows = b * t;
            let n = (hq + 2 * hk) * d;
            let mut r = rng(1100 + ci as u64);
            let (x, g, m) = (random_vec(&mut r, rows * cols), random_vec(&mut r, cols), random_vec(&mut r, n * cols));
            let each: Vec<usize> = (0..b).map(|s| (cap - 1 + s * 5) % cap).collect();
            let pos0 = cap - t;
            let ats: Vec<(String, At)> = if t == 1 { vec![(format!("from {pos0}"), At::From(pos0)), (format!("each {each:?}"), At::Each(&each))] } else { vec![(format!("from {pos0}"), At::From(pos0))] };
            // The oracle: the stacked outputs of every row in f64, then each head rotated.
            let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let stacked: Vec<Vec<f64>> = x
                .chunks(cols)
                .map(|row| {
                    let h = cpu::norm::rms_norm_row(&row.iter().map(|&v| v as f64).collect::<Vec<_>>(), &g64, eps as f64);
                    m.chunks(cols).map(|mr| mr.iter().zip(&h).map(|(&a, &b)| a as f64 * b).sum()).collect()
                })
                .collect();
            for g_ in [gpu, &small] {
                let (tx, tg, tm) = (ok(g_.upload(&x, &[rows, cols]))?, ok(g_.upload(&g, &[cols]))?, ok(g_.upload(&m, &[n, cols]))?);
                for style in [RopeStyle::Adjacent, RopeStyle::Half] {
                    for (at_label, at) in &ats {
                        let label = format!("norm_qkv_rope_kv {style:?} b={b} t={t} {hq}/{hk}x{d} cols={cols} {at_label} ({})", g_.label());
                        let kc = ok(g_.full(&[b, hk, cap, d], f32::NAN))?;
                        let vc = ok(g_.full(&[b, hk, cap, d], f32::NAN))?;
                        let heads = Heads { q: hq, kv: hk, dim: d };
                        let q = ok(g_.download(&ok(norm_qkv_rope_kv(g_, &tx, &tg, eps, &tm, heads, &kc, &vc, *at, &Rope::plain(theta as f64, d, style)))?))?;
                        check_placed(&label, &stacked, &q, (&ok(g_.download(&kc))?, &ok(g_.download(&vc))?), [b, t, hq, hk, d, cap], *at, style)?;
                    }
                }
                // Refused: a matrix of the wrong height, positions past the caches.
                let kc = ok(g_.full(&[b, hk, cap, d], 0.0))?;
                let heads = Heads { q: hq, kv: hk + 1, dim: d };
                norm_qkv_rope_kv(g_, &tx, &tg, eps, &tm, heads, &kc, &kc, At::From(0), &Rope::plain(theta as f64, d, RopeStyle::Half)).err().ok_or(format!("{hq} + 2 × {} heads of {d} accepted for a matrix of {n} rows", hk + 1))?;
                let heads = Heads { q: hq, kv: hk, dim: d };
                norm_qkv_rope_kv(g_, &tx, &tg, eps, &tm, heads, &kc, &kc, At::From(cap - t + 1), &Rope::plain(theta as f64, d, RopeStyle::Half)).err().ok_or("positions past the caches accepted")?;
            }
        }
        Ok(())
    });
}

/// Checks what a stacked q/k/v step placed against the oracle: `stacked` holds each row's
/// product [q | k | v] in f64; the queries must come back rotated, the keys rotated at their
/// cache rows and the values copied there ([b, t, hq, hk, d, cap]), every other cache entry
/// untouched (NaN).
fn check_placed(label: &str, stacked: &[Vec<f64>], q: &[f32], (gk, gv): (&[f32], &[f32]), [b, t, hq, hk, d, cap]: [usize; 6], at: revive::ops::At, style: RopeStyle) -> Result<(), String> {
    use revive::ops::At;
    let (mut want_q, mut want_k, mut got_k, mut want_v, mut got_v) = (vec![], vec![], vec![], vec![], vec![]);
    let mut written = vec![false; gk.len()];
    for (row, out) in stacked.iter().enumerate() {
        let (s, tok) = (row / t, row % t);
        let pos = match at {
            At::From(p0) => p0 + tok,
            At::Each(ps) => ps[s],
        };
        for (h, head) in out.chunks(d).enumerate() {
            let mut head = head.to_vec();
            if h < hq + hk {
                cpu::rope::rope_head(&mut head, pos, &plain(d, style));
            }
            if h < hq {
                want_q.extend(head);
                continue;
            }
            let at_cache = ((s * hk + (h - hq) % hk) * cap + pos) * d;
            written[at_cache..at_cache + d].fill(true);
            if h < hq + hk {
                want_k.extend(head);
                got_k.extend_from_slice(&gk[at_cache..at_cache + d]);
            } else {
                want_v.extend(head);
                got_v.extend_from_slice(&gv[at_cache..at_cache + d]);
            }
        }
    }
    if want_q.len() != b * t * hq * d {
        return Err(format!("{label}: {} rows for {b} sequences of {t}", stacked.len()));
    }
    compare(&format!("{label}: queries"), q, &want_q, Tolerance::F32)?;
    compare(&format!("{label}: keys"), &got_k, &want_k, Tolerance::F32)?;
    compare(&format!("{label}: values"), &got_v, &want_v, Tolerance::F32)?;
    if let Some(i) = (0..gk.len()).find(|&i| !written[i] && (!gk[i].is_nan() || !gv[i].is_nan())) {
        return Err(format!("{label}: cache entry {i} (row {}) written", (i / d) % cap));
    }
    Ok(())
}

/// The rotation and the cache write reading q, k and v from the rows of one stacked product
/// (`rope_kv_stacked`, the layer step of a pass without a tape): against the oracle for two
/// sequences of five tokens from a later position, one token, 3 and 21 sequences at their
/// own positions (21: two dispatches), SmolLM2's heads and small odd shapes, both pairings, and
/// at a 1-workgroup dispatch limit (the parts copied out, then the kernels that split).
#[test]
fn rope_kv_stacked_matches_the_oracle() {
    use revive::ops::rope::{rope_kv_stacked, Heads};
    use revive::ops::At;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 1, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (ci, &(b, t, hq, hk, d, cap)) in [(2, 5, 9, 3, 64, 12), (1, 1, 2, 1, 6, 3), (3, 1, 4, 4, 2, 7), (21, 1, 2, 1, 4, 9)].iter().enumerate() {
            let n = (hq + 2 * hk) * d;
            let mut r = rng(1200 + ci as u64);
            let x = random_vec(&mut r, b * t * n);
            let stacked: Vec<Vec<f64>> = x.chunks(n).map(|row| row.iter().map(|&v| v as f64).collect()).collect();
            let each: Vec<usize> = (0..b).map(|s| (s * 4 + 1) % cap).collect();
            let mut ats = vec![(format!("from {}", cap - t), At::From(cap - t))];
            if t == 1 {
                ats.push((format!("each {each:?}"), At::Each(&each)));
            }
            for g in [gpu, &small] {
                let tx = ok(g.upload(&x, &[b * t, n]))?;
                for style in [RopeStyle::Adjacent, RopeStyle::Half] {
                    for (at_label, at) in &ats {
                        let label = format!("rope_kv_stacked {style:?} b={b} t={t} {hq}/{hk}x{d} {at_label} ({})", g.label());
                        let kc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                        let vc = ok(g.full(&[b, hk, cap, d], f32::NAN))?;
                        let q = ok(g.download(&ok(rope_kv_stacked(g, &tx, Heads { q: hq, kv: hk, dim: d }, &kc, &vc, *at, &plain(d, style)))?))?;
                        check_placed(&label, &stacked, &q, (&ok(g.download(&kc))?, &ok(g.download(&vc))?), [b, t, hq, hk, d, cap], *at, style)?;
                    }
                }
                let kc = ok(g.full(&[b, hk, cap, d], 0.0))?;
                rope_kv_stacked(g, &tx, Heads { q: hq, kv: hk + 1, dim: d }, &kc, &kc, At::From(0), &plain(d, RopeStyle::Half)).err().ok_or("a stacked product of the wrong width accepted")?;
                rope_kv_stacked(g, &tx, Heads { q: hq, kv: hk, dim: d }, &kc, &kc, At::From(cap - t + 1), &plain(d, RopeStyle::Half)).err().ok_or("positions past the caches accepted")?;
            }
        }
        Ok(())
    });
}
