//! Causal grouped-query attention and KV-cache writes on every adapter against the f64 oracle.

mod common;
use common::*;
use revive::cpu;
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::attention::{attention, attention_with, write_kv, write_kv_pair, AttentionKernel};
use revive::ops::elementwise::View;

struct Case {
    b: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    s: usize,
    pos0: usize,
}

/// Every kernel the device runs (the lanes kernel where subgroups are exactly 8 wide).
fn check(gpu: &Gpu, c: &Case, seed: u64) -> Result<(), String> {
    for kernel in AttentionKernel::ALL.into_iter().filter(|k| k.runs_on(gpu)) {
        check_with(gpu, c, seed, kernel)?;
    }
    Ok(())
}

fn check_with(gpu: &Gpu, c: &Case, seed: u64, kernel: AttentionKernel) -> Result<(), String> {
    let Case { b, t, hq, hkv, d, s, pos0 } = *c;
    let mut r = rng(seed);
    let q = random_vec(&mut r, b * t * hq * d);
    let mut k = random_vec(&mut r, b * hkv * s * d);
    let mut v = random_vec(&mut r, b * hkv * s * d);
    // Rows past the last position are not keys yet: NaN there catches a kernel that reads them.
    for (i, (kx, vx)) in k.iter_mut().zip(v.iter_mut()).enumerate() {
        if (i / d) % s >= pos0 + t {
            (*kx, *vx) = (f32::NAN, f32::NAN);
        }
    }
    let (qs, kvs) = ([b, t, hq, d], [b, hkv, s, d]);
    let (tq, tk, tv) = (ok(gpu.upload(&q, &qs))?, ok(gpu.upload(&k, &kvs))?, ok(gpu.upload(&v, &kvs))?);
    let scale = 1.0 / (d as f32).sqrt();
    let got = ok(gpu.download(&ok(attention_with(gpu, &tq, &tk, &tv, pos0, scale, kernel))?))?;
    let want = cpu::attention(&q, qs, &k, &v, kvs, pos0, scale as f64);
    compare(&format!("attention ({kernel:?}) b={b} t={t} hq={hq} hkv={hkv} d={d} s={s} pos0={pos0}"), &got, &want, Tolerance::F32)
}

#[test]
fn attention_matches_oracle() {
    for_each_gpu(|gpu| {
        let cases = [
            // Decode steps: one token at position 7; SmolLM2's 9 query heads over 3 kv heads.
            Case { b: 2, t: 1, hq: 9, hkv: 3, d: 64, s: 20, pos0: 7 },
            Case { b: 2, t: 1, hq: 4, hkv: 4, d: 64, s: 9, pos0: 7 },
            // Prefill from position 0.
            Case { b: 2, t: 13, hq: 9, hkv: 3, d: 64, s: 29, pos0: 0 },
            Case { b: 2, t: 13, hq: 5, hkv: 5, d: 64, s: 13, pos0: 0 },
            // Odd head dims, a single head, a chunk after a cached prefix.
            Case { b: 1, t: 1, hq: 1, hkv: 1, d: 1, s: 1, pos0: 0 },
            Case { b: 3, t: 7, hq: 6, hkv: 2, d: 6, s: 31, pos0: 11 },
            // Past one 256-key tile: the online softmax rescales across tiles.
            Case { b: 1, t: 3, hq: 3, hkv: 1, d: 64, s: 700, pos0: 600 },
            // Longer than 4096 keys: there is no key limit.
            Case { b: 1, t: 2, hq: 2, hkv: 1, d: 8, s: 5003, pos0: 5001 },
            // An edit's batch: many short sequences, one dispatch (a workgroup row each).
            Case { b: 37, t: 5, hq: 9, hkv: 3, d: 64, s: 5, pos0: 0 },
            Case { b: 11, t: 2, hq: 4, hkv: 2, d: 6, s: 9, pos0: 6 },
            // Prefills over many 16-key tiles with a partial last tile of (token, head) rows
            // (37 · 3 = 111 rows), after a cached prefix; a 128-token SmolLM2 prefill; head
            // dimensions of 17, 63 and 64 (a thread's 4 elements partly or fully used); one
            // query head per kv head.
            Case { b: 2, t: 37, hq: 9, hkv: 3, d: 64, s: 50, pos0: 5 },
            Case { b: 1, t: 128, hq: 9, hkv: 3, d: 64, s: 128, pos0: 0 },
            Case { b: 3, t: 19, hq: 6, hkv: 2, d: 17, s: 41, pos0: 22 },
            Case { b: 1, t: 23, hq: 4, hkv: 4, d: 63, s: 23, pos0: 0 },
            // Above the tiled kernel's head dimension: it falls back to the per-query kernel.
            Case { b: 1, t: 9, hq: 2, hkv: 1, d: 80, s: 12, pos0: 3 },
        ];
        for (i, c) in cases.iter().enumerate() {
            check(gpu, c, 500 + i as u64)?;
        }
        Ok(())
    });
}

#[test]
fn lanes_matches_oracle_where_subgroups_are_8_wide() {
    // Tiles of 16 rows cut short in either 8-row half or at one row; key blocks of 16 cut short
    // (a lane's second key or both past the last); head dimensions that leave lanes' dims partly
    // or wholly unused (1, 6, 17, 63) or fill them (64); many blocks after a cached prefix; one
    // query head per kv head and groups of 3 and 4.
    let cases = [
        Case { b: 1, t: 1, hq: 1, hkv: 1, d: 1, s: 1, pos0: 0 },
        Case { b: 2, t: 3, hq: 3, hkv: 1, d: 64, s: 9, pos0: 5 },
        Case { b: 1, t: 13, hq: 1, hkv: 1, d: 17, s: 13, pos0: 0 },
        Case { b: 3, t: 5, hq: 6, hkv: 2, d: 6, s: 30, pos0: 21 },
        Case { b: 2, t: 11, hq: 9, hkv: 3, d: 64, s: 40, pos0: 17 },
        Case { b: 1, t: 70, hq: 8, hkv: 2, d: 63, s: 70, pos0: 0 },
        Case { b: 1, t: 4, hq: 4, hkv: 1, d: 32, s: 300, pos0: 290 },
    ];
    for_each_gpu_with_lanes(
        |gpu| {
            let x = gpu.upload(&[1.0; 4], &[1, 1, 1, 4])?;
            attention_with(gpu, &x, &x, &x, 0, 1.0, AttentionKernel::Lanes)
        },
        |gpu| {
            for (i, c) in cases.iter().enumerate() {
                check_with(gpu, c, 700 + i as u64, AttentionKernel::Lanes)?;
            }
            Ok(())
        },
    );
}

#[test]
fn attention_splits_heads_and_tokens_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        // Whole kv groups per dispatch, several token ranges.
        check(gpu, &Case { b: 2, t: 5, hq: 6, hkv: 2, d: 8, s: 12, pos0: 4 }, 600)?;
        // Groups of 4 query heads with 3 workgroups per dispatch: a dispatch straddles kv heads.
        check(gpu, &Case { b: 2, t: 4, hq: 8, hkv: 2, d: 8, s: 9, pos0: 3 }, 601)?;
        // Caches larger than one binding: each dispatch binds only its kv heads' rows.
        check(gpu, &Case { b: 1, t: 2, hq: 3, hkv: 3, d: 16, s: 40, pos0: 30 }, 602)?;
        // Whole sequences per dispatch, at most 3 (the workgroup limit) at a time.
        check(gpu, &Case { b: 8, t: 1, hq: 2, hkv: 1, d: 8, s: 4, pos0: 2 }, 603)?;
        // Every head in one dispatch and a sequence's tokens split across dispatches (3 and 1
        // per dispatch): the tiled kernel at a later chunk's position and offsets.
        check(gpu, &Case { b: 2, t: 10, hq: 1, hkv: 1, d: 8, s: 14, pos0: 2 }, 604)?;
        check(gpu, &Case { b: 2, t: 9, hq: 2, hkv: 1, d: 5, s: 11, pos0: 1 }, 605)
    });
}

/// Decoding the last token against a cache filled by write_kv equals the last row of a prefill
/// of the whole sequence.
#[test]
fn decode_with_cache_equals_prefill() {
    for_each_gpu(|gpu| {
        let (b, n, hq, hkv, d, s) = (2, 9, 9, 3, 64, 16);
        let mut r = rng(700);
        let q = random_vec(&mut r, b * n * hq * d);
        let k_new = random_vec(&mut r, b * n * hkv * d);
        let v_new = random_vec(&mut r, b * n * hkv * d);
        let scale = 0.125;
        // Rows for tokens t0..t1 of every sequence, as a [B, t1 - t0, H, D] tensor.
        let rows = |x: &[f32], h: usize, t0: usize, t1: usize| -> Result<_, String> {
            let data: Vec<f32> = (0..b).flat_map(|bi| x[(bi * n + t0) * h * d..(bi * n + t1) * h * d].to_vec()).collect();
            ok(gpu.upload(&data, &[b, t1 - t0, h, d]))
        };

        let kc = ok(gpu.empty(&[b, hkv, s, d]))?;
        let vc = ok(gpu.empty(&[b, hkv, s, d]))?;
        ok(write_kv(gpu, &rows(&k_new, hkv, 0, n)?, &kc, 0))?;
        ok(write_kv(gpu, &rows(&v_new, hkv, 0, n)?, &vc, 0))?;
        let full = ok(gpu.download(&ok(attention(gpu, &rows(&q, hq, 0, n)?, &kc, &vc, 0, scale))?))?;

        // The cache holds the new rows, in its own layout.
        let cache = ok(gpu.download(&kc))?;
        let dst = View { offset: 0, strides: [hkv * s * d, d, s * d, 1] };
        let want = cpu::copy_strided(&k_new, View::dense(&[b, n, hkv, d]), &cache, dst, &[b, n, hkv, d]);
        let written: Vec<usize> = (0..cache.len()).filter(|i| (i / d) % s < n).collect();
        let pick = |xs: &[f64]| written.iter().map(|&i| xs[i]).collect::<Vec<f64>>();
        let got_rows: Vec<f32> = written.iter().map(|&i| cache[i]).collect();
        compare("write_kv rows", &got_rows, &pick(&want), Tolerance::F32)?;

        // Prefill n - 1 tokens, then decode the last one at position n - 1.
        let kc2 = ok(gpu.empty(&[b, hkv, s, d]))?;
        let vc2 = ok(gpu.empty(&[b, hkv, s, d]))?;
        ok(write_kv(gpu, &rows(&k_new, hkv, 0, n - 1)?, &kc2, 0))?;
        ok(write_kv(gpu, &rows(&v_new, hkv, 0, n - 1)?, &vc2, 0))?;
        ok(write_kv(gpu, &rows(&k_new, hkv, n - 1, n)?, &kc2, n - 1))?;
        ok(write_kv(gpu, &rows(&v_new, hkv, n - 1, n)?, &vc2, n - 1))?;
        let step = ok(gpu.download(&ok(attention(gpu, &rows(&q, hq, n - 1, n)?, &kc2, &vc2, n - 1, scale))?))?;
        let last: Vec<f64> =
            (0..b).flat_map(|bi| full[(bi * n + n - 1) * hq * d..(bi * n + n) * hq * d].iter().map(|&x| x as f64)).collect();
        compare("decode vs prefill", &step, &last, Tolerance::F32)
    });
}

/// Keys and values written in one dispatch land where two `write_kv` calls put them (the f64
/// copy oracle), and every other cache row keeps its value: a prefill, a decode step at the
/// cache's last row, and shapes past a 3-workgroup dispatch limit (two copies then).
#[test]
fn keys_and_values_written_together_match_the_oracle() {
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (b, t, hkv, d, s, pos0) in [(2, 7, 3, 5, 13, 4), (1, 1, 3, 64, 9, 8), (2, 7, 3, 11, 13, 6)] {
            for g in [gpu, &small] {
                let mut r = rng((b * t * d + pos0) as u64);
                let (k, v) = (random_vec(&mut r, b * t * hkv * d), random_vec(&mut r, b * t * hkv * d));
                let (k0, v0) = (random_vec(&mut r, b * hkv * s * d), random_vec(&mut r, b * hkv * s * d));
                let kc = ok(g.upload(&k0, &[b, hkv, s, d]))?;
                let vc = ok(g.upload(&v0, &[b, hkv, s, d]))?;
                ok(write_kv_pair(g, &ok(g.upload(&k, &[b, t, hkv, d]))?, &ok(g.upload(&v, &[b, t, hkv, d]))?, &kc, &vc, pos0))?;
                let dst = View { offset: pos0 * d, strides: [hkv * s * d, d, s * d, 1] };
                for (name, src, before, cache) in [("keys", &k, &k0, &kc), ("values", &v, &v0, &vc)] {
                    let want = cpu::copy_strided(src, View::dense(&[b, t, hkv, d]), before, dst, &[b, t, hkv, d]);
                    let got = ok(g.download(cache))?;
                    if let Some(i) = (0..got.len()).find(|&i| got[i] as f64 != want[i]) {
                        return Err(format!("{name} {b}x{t}x{hkv}x{d} into {s} rows at {pos0} ({}): element {i} is {} not {}", g.label(), got[i], want[i]));
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn attention_rejects_bad_shapes() {
    for_each_gpu(|gpu| {
        let q = ok(gpu.full(&[1, 4, 4, 8], 0.0))?;
        let kv = ok(gpu.full(&[1, 3, 6, 8], 0.0))?;
        let err = attention(gpu, &q, &kv, &kv, 0, 1.0).err().ok_or("4 query heads over 3 kv heads accepted")?;
        if !err.to_string().contains("multiple") {
            return Err(format!("unexpected message: {err}"));
        }
        let kv = ok(gpu.full(&[1, 2, 6, 8], 0.0))?;
        let err = attention(gpu, &q, &kv, &kv, 3, 1.0).err().ok_or("positions past the cache accepted")?;
        if !err.to_string().contains("do not fit") {
            return Err(format!("unexpected message: {err}"));
        }
        let src = ok(gpu.full(&[1, 4, 2, 8], 0.0))?;
        let err = write_kv(gpu, &src, &kv, 3).err().ok_or("write past the cache accepted")?;
        if !err.to_string().contains("do not fit") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// One query token per sequence, each at its own position (`attention_at_into` with
/// `At::Each`): sequence s against the oracle's attention of its own query at positions[s]
/// over its own cache rows 0 ..= positions[s]; rows past a sequence's position are NaN (a
/// kernel that read one would show it). Every kernel the device runs; 1, 5, 16, 17 and 40
/// sequences (the kernels take 16 per dispatch); SmolLM2's heads, odd head dims, one head;
/// and with 3 workgroups per dispatch (heads split, a sequence per dispatch).
#[test]
fn attention_at_each_sequences_own_position_matches_the_oracle() {
    use revive::ops::attention::attention_at_into;
    use revive::ops::At;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        let cases = [(1, 9, 3, 64, 20), (5, 9, 3, 64, 33), (16, 4, 2, 6, 9), (17, 6, 2, 17, 12), (40, 2, 1, 8, 300), (3, 1, 1, 1, 2)];
        for (ci, &(b, hq, hkv, d, s)) in cases.iter().enumerate() {
            let mut r = rng(900 + ci as u64);
            let positions: Vec<usize> = (0..b).map(|i| if i == 1 { s - 1 } else { (i * 13 + 5 * ci) % s }).collect();
            let q = random_vec(&mut r, b * hq * d);
            let mut k = random_vec(&mut r, b * hkv * s * d);
            let mut v = random_vec(&mut r, b * hkv * s * d);
            for (i, (kx, vx)) in k.iter_mut().zip(v.iter_mut()).enumerate() {
                if (i / d) % s > positions[i / (hkv * s * d)] {
                    (*kx, *vx) = (f32::NAN, f32::NAN);
                }
            }
            let scale = 1.0 / (d as f32).sqrt();
            for g in [gpu, &small] {
                if g.split_limits().max_binding_bytes < (hkv * s * d * 4) as u64 {
                    continue;
                }
                let (tq, tk, tv) = (ok(g.upload(&q, &[b, 1, hq, d]))?, ok(g.upload(&k, &[b, hkv, s, d]))?, ok(g.upload(&v, &[b, hkv, s, d]))?);
                for kernel in AttentionKernel::ALL.into_iter().filter(|k| k.runs_on(g)) {
                    let out = ok(g.full(&[b, 1, hq, d], f32::NAN))?;
                    ok(attention_at_into(g, &tq, &tk, &tv, At::Each(&positions), scale, kernel, &out))?;
                    let got = ok(g.download(&out))?;
                    for (si, &pos) in positions.iter().enumerate() {
                        let (qs, kvs) = (si * hq * d..(si + 1) * hq * d, si * hkv * s * d..(si + 1) * hkv * s * d);
                        let want = cpu::attention(&q[qs.clone()], [1, 1, hq, d], &k[kvs.clone()], &v[kvs], [1, hkv, s, d], pos, scale as f64);
                        let label = format!("attention each ({kernel:?}, {}) b={b} hq={hq} hkv={hkv} d={d} s={s}: seq {si} at {pos}", g.label());
                        compare(&label, &got[qs], &want, Tolerance::F32)?;
                    }
                }
                // Refused: a position past the cache, a count that is not one per sequence.
                let out = ok(g.empty(&[b, 1, hq, d]))?;
                let mut past = positions.clone();
                past[0] = s;
                attention_at_into(g, &tq, &tk, &tv, At::Each(&past), scale, AttentionKernel::PerQuery, &out).err().ok_or("a position past the cache accepted")?;
                attention_at_into(g, &tq, &tk, &tv, At::Each(&positions[1..]), scale, AttentionKernel::PerQuery, &out).err().ok_or("too few positions accepted")?;
            }
        }
        Ok(())
    });
}
