//! Attention backward (dq, dk, dv) on every adapter against the f64 oracle, and the oracle
//! against central differences of the f64 forward.

mod common;
use common::*;
use revive::cpu;
use revive::cpu::attention::{attention64, attention_bwd64};
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::attention::{attention_bwd, attention_bwd_into, attention_bwd_with, AttentionKernel, KvGrads};

/// (B, T, Hq, Hkv, D, pos0, S)
type Case = (usize, usize, usize, usize, usize, usize, usize);

/// Each gradient element sums up to (pos0 + T) · group products after a softmax recomputed in
/// f32; at these sizes (up to 303 keys, 280 rows per key) that stays within the forward's 1e-5.
/// Much longer contexts would accumulate more rounding and may need ~1e-4.
const TOL: Tolerance = Tolerance::F32;

/// Every kernel family the device runs (the dk/dv pass reads the stats the dq pass writes, so
/// it is checked with each).
fn check(gpu: &Gpu, case: Case, seed: u64) -> Result<(), String> {
    for kernel in AttentionKernel::ALL.into_iter().filter(|k| k.runs_on(gpu)) {
        check_with(gpu, case, seed, kernel)?;
    }
    Ok(())
}

fn check_with(gpu: &Gpu, (b, t, hq, hkv, d, pos0, s): Case, seed: u64, kernel: AttentionKernel) -> Result<(), String> {
    let mut r = rng(seed);
    let q = random_vec(&mut r, b * t * hq * d);
    let k = random_vec(&mut r, b * hkv * s * d);
    let v = random_vec(&mut r, b * hkv * s * d);
    let dout = random_vec(&mut r, b * t * hq * d);
    let (qs, kvs) = ([b, t, hq, d], [b, hkv, s, d]);
    let tq = ok(gpu.upload(&q, &qs))?;
    let (tk, tv) = (ok(gpu.upload(&k, &kvs))?, ok(gpu.upload(&v, &kvs))?);
    let td = ok(gpu.upload(&dout, &qs))?;
    let scale = 1.0 / (d as f32).sqrt();
    let l = pos0 + t;
    let (wq, wk, wv) = cpu::attention_bwd(&q, qs, &k, &v, kvs, pos0, scale as f64, &dout);
    // Every key's gradient, then (where the queries start past 0) only the keys the queries
    // wrote: the oracle's rows from pos0 on of each sequence.
    let from: &[usize] = if pos0 > 0 { &[0, pos0] } else { &[0] };
    for &keys_from in from {
        let (dq, dk, dv) = ok(attention_bwd_with(gpu, &tq, &tk, &tv, pos0, keys_from, scale, &td, kernel))?;
        let lo = l - keys_from;
        if dk.shape() != [b, lo, hkv, d] || dv.shape() != [b, lo, hkv, d] {
            return Err(format!("dk {:?} / dv {:?}, expected [{b}, {lo}, {hkv}, {d}]", dk.shape(), dv.shape()));
        }
        let rows = |full: &[f64]| -> Vec<f64> { (0..b).flat_map(|bi| full[(bi * l + keys_from) * hkv * d..(bi + 1) * l * hkv * d].to_vec()).collect() };
        let what = format!("({kernel:?}) B={b} T={t} Hq={hq} Hkv={hkv} D={d} pos0={pos0} S={s} keys from {keys_from}");
        compare(&format!("attention_bwd dq {what}"), &ok(gpu.download(&dq))?, &wq, TOL)?;
        compare(&format!("attention_bwd dk {what}"), &ok(gpu.download(&dk))?, &rows(&wk), TOL)?;
        compare(&format!("attention_bwd dv {what}"), &ok(gpu.download(&dv))?, &rows(&wv), TOL)?;
        // dk and dv into their columns of a stacked q/k/v gradient (poisoned: every value of
        // those columns must be written), as the targets' backward pass takes them.
        let n = (hq + 2 * hkv) * d;
        let (stacked, dq2) = (ok(gpu.empty(&[b * lo, n]))?, ok(gpu.empty(&qs))?);
        let out = KvGrads { k: (&stacked, hq * d), v: (&stacked, (hq + hkv) * d), tstride: n };
        ok(attention_bwd_into(gpu, &tq, &tk, &tv, pos0, keys_from, scale, &td, kernel, &dq2, out))?;
        let all = ok(gpu.download(&stacked))?;
        let cols = |from: usize| -> Vec<f32> { all.chunks(n).flat_map(|row| row[from..from + hkv * d].to_vec()).collect() };
        compare(&format!("attention_bwd_into dq {what}"), &ok(gpu.download(&dq2))?, &wq, TOL)?;
        compare(&format!("attention_bwd_into stacked dk {what}"), &cols(hq * d), &rows(&wk), TOL)?;
        compare(&format!("attention_bwd_into stacked dv {what}"), &cols((hq + hkv) * d), &rows(&wv), TOL)?;
    }
    Ok(())
}

#[test]
fn attention_bwd_matches_oracle() {
    let cases: &[Case] = &[
        (1, 1, 1, 1, 1, 0, 1),
        (1, 7, 4, 2, 16, 0, 7),
        (2, 5, 6, 3, 13, 3, 11),
        // More than one 256-key tile per query, and a cache longer than pos0 + T.
        (1, 3, 9, 3, 64, 300, 310),
        // More than 256 (query, head) rows per key in the dk/dv pass.
        (1, 70, 4, 1, 8, 0, 70),
        (2, 17, 4, 4, 32, 2, 19),
        // An edit's batch: many short sequences, two dispatches for all of them.
        (37, 3, 9, 3, 16, 0, 3),
        (6, 4, 4, 2, 8, 2, 7),
        // The tiled dq kernel: several 16-key tiles and a partial last tile of (token, head)
        // rows (37 · 3 = 111), SmolLM2's shape, head dimensions of 17 and 63, and above its 64
        // (the per-query kernel then).
        (2, 37, 9, 3, 64, 5, 45),
        (3, 19, 6, 2, 17, 0, 19),
        (1, 23, 4, 4, 63, 4, 30),
        (1, 9, 2, 1, 80, 0, 9),
    ];
    for_each_gpu(|gpu| {
        for (i, &c) in cases.iter().enumerate() {
            check(gpu, c, 5100 + i as u64)?;
        }
        Ok(())
    });
}

#[test]
fn lanes_bwd_matches_oracle_where_subgroups_are_8_wide() {
    // 16-row tiles cut short in either half or at one row; 16-key tiles cut short (dk/dv's last
    // keys, dq's key blocks); dk/dv over many 16-row blocks of rows (70 · 4 = 280) and from a
    // key tile whose first keys no query of a later block sees; head dimensions that leave
    // lanes' dims partly or wholly unused (1, 6, 17, 63) or fill them (64); after a cached
    // prefix (and dk/dv of the new keys only).
    let cases: &[Case] = &[
        (1, 1, 1, 1, 1, 0, 1),
        (2, 3, 3, 1, 64, 5, 9),
        (1, 13, 1, 1, 17, 0, 13),
        (3, 5, 6, 2, 6, 21, 30),
        (2, 11, 9, 3, 64, 17, 40),
        (1, 70, 4, 1, 63, 0, 70),
        (1, 40, 9, 3, 32, 3, 43),
    ];
    for_each_gpu_with_lanes(
        |gpu| {
            let x = gpu.upload(&[1.0; 4], &[1, 1, 1, 4])?;
            attention_bwd_with(gpu, &x, &x, &x, 0, 0, 1.0, &x, AttentionKernel::Lanes)
        },
        |gpu| {
            for (i, &c) in cases.iter().enumerate() {
                check_with(gpu, c, 5500 + i as u64, AttentionKernel::Lanes)?;
            }
            Ok(())
        },
    );
}

#[test]
fn attention_bwd_splits_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        // Queries in pieces of one token (group 2 of 3 workgroups), keys in pieces of 3, later
        // key pieces binding only the queries that see them.
        check(gpu, (2, 5, 4, 2, 8, 3, 9), 5200)?;
        check(gpu, (1, 11, 3, 3, 6, 0, 11), 5201)?;
        // Whole sequences per dispatch (3 queries, 3 keys, 2 kv groups), 3 sequences at a time.
        check(gpu, (5, 1, 2, 2, 8, 2, 4), 5202)
    });
}

#[test]
fn attention_bwd_is_deterministic() {
    for_each_gpu(|gpu| {
        let (b, t, hq, hkv, d, s) = (1, 9, 6, 2, 16, 9);
        let mut r = rng(5300);
        let up = |n: usize, shape: &[usize], r: &mut _| ok(gpu.upload(&random_vec(r, n), shape));
        let q = up(b * t * hq * d, &[b, t, hq, d], &mut r)?;
        let k = up(b * hkv * s * d, &[b, hkv, s, d], &mut r)?;
        let v = up(b * hkv * s * d, &[b, hkv, s, d], &mut r)?;
        let dout = up(b * t * hq * d, &[b, t, hq, d], &mut r)?;
        let run = || -> Result<Vec<Vec<f32>>, String> {
            let (a, bb, c) = ok(attention_bwd(gpu, &q, &k, &v, 0, 0.25, &dout))?;
            Ok(vec![ok(gpu.download(&a))?, ok(gpu.download(&bb))?, ok(gpu.download(&c))?])
        };
        let first = run()?;
        if run()? != first {
            return Err("two runs gave different bits".into());
        }
        Ok(())
    });
}

#[test]
fn attention_bwd_oracle_matches_finite_differences() {
    let (b, t, hq, hkv, d, pos0, s) = (2, 3, 4, 2, 5, 2, 6);
    let (qs, kvs) = ([b, t, hq, d], [b, hkv, s, d]);
    let mut r = rng(5400);
    let mut vec = |n: usize| random_vec(&mut r, n).into_iter().map(f64::from).collect::<Vec<f64>>();
    let (q, k, v, dout) = (vec(b * t * hq * d), vec(b * hkv * s * d), vec(b * hkv * s * d), vec(b * t * hq * d));
    let scale = 0.7;
    let (dq, dk, dv) = attention_bwd64(&q, qs, &k, &v, kvs, pos0, scale, &dout);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| attention64(q, qs, k, v, kvs, pos0, scale).iter().zip(&dout).map(|(a, b)| a * b).sum::<f64>();
    // dk/dv are token-major [B, L, Hkv, D]; the finite differences run over the cache
    // [B, Hkv, S, D], where rows at and past L = pos0 + T have zero gradient.
    let l = pos0 + t;
    let to_cache = |g: &[f64]| {
        let mut c = vec![0.0; b * hkv * s * d];
        for bi in 0..b {
            for j in 0..l {
                for h in 0..hkv {
                    for i in 0..d {
                        c[((bi * hkv + h) * s + j) * d + i] = g[((bi * l + j) * hkv + h) * d + i];
                    }
                }
            }
        }
        c
    };
    check_gradient("attention dq", |x| loss(x, &k, &v), &q, &dq, 200, 1e-5, 1e-6).unwrap();
    check_gradient("attention dk", |x| loss(&q, x, &v), &k, &to_cache(&dk), 200, 1e-5, 1e-6).unwrap();
    check_gradient("attention dv", |x| loss(&q, &k, x), &v, &to_cache(&dv), 200, 1e-5, 1e-6).unwrap();
}

#[test]
fn attention_bwd_rejects_mismatched_shapes() {
    for_each_gpu(|gpu| {
        let q = ok(gpu.upload(&[0.0; 16], &[1, 2, 2, 4]))?;
        let kv = ok(gpu.upload(&[0.0; 16], &[1, 1, 4, 4]))?;
        let bad = ok(gpu.upload(&[0.0; 16], &[1, 2, 4, 2]))?;
        let err = attention_bwd(gpu, &q, &kv, &kv, 0, 0.5, &bad).err().ok_or("attention_bwd accepted d_out [1, 2, 4, 2]")?.to_string();
        if !(err.contains("attention_bwd") && err.contains("d_out")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = attention_bwd(gpu, &q, &kv, &bad, 0, 0.5, &q).err().ok_or("attention_bwd accepted a v_cache unlike k_cache")?.to_string();
        if !(err.contains("attention_bwd") && err.contains("v_cache")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = attention_bwd_with(gpu, &q, &kv, &kv, 1, 2, 0.5, &q, AttentionKernel::Tiled).err().ok_or("attention_bwd accepted keys from past pos0")?.to_string();
        if !(err.contains("attention_bwd") && err.contains("keys from 2")) {
            return Err(format!("unexpected message: {err}"));
        }
        // Outputs placed where they do not fit: rows narrower than the kv heads, a last row past
        // the tensor's end, a dq unlike q.
        let (dq, out) = (ok(gpu.empty(&[1, 2, 2, 4]))?, ok(gpu.empty(&[2, 16]))?);
        let kernel = AttentionKernel::PerQuery;
        let placed = |k_at: usize, v_at: usize, tstride: usize, dq: &revive::gpu::Tensor| {
            attention_bwd_into(gpu, &q, &kv, &kv, 0, 0, 0.5, &q, kernel, dq, KvGrads { k: (&out, k_at), v: (&out, v_at), tstride })
        };
        for (what, r, needle) in [
            ("rows of 3 for heads of 4", placed(0, 8, 3, &dq), "dk"),
            ("dv's last row past the end", placed(0, 13, 16, &dq), "dv"),
            ("a dq unlike q", placed(0, 8, 16, &out), "dq"),
        ] {
            match r {
                Err(e) if e.to_string().contains("attention_bwd") && e.to_string().contains(needle) => {}
                other => return Err(format!("{what}: {:?}", other.map(|_| ()))),
            }
        }
        ok(placed(0, 12, 16, &dq))
    });
}
