//! RoPE backward (rotation by −angle) on every adapter against the f64 oracle, and the oracle
//! against central differences of the f64 forward.

mod common;
use common::*;
use revive::cpu;
use revive::cpu::rope::{rope_head, rope_head_bwd};
use revive::gpu::{Gpu, SplitLimits};
use revive::model::{Rope, RopeStyle};
use revive::ops::rope::{rope, rope_bwd, rope_bwd_stacked, Heads};

fn check(gpu: &Gpu, shape: [usize; 4], pos0: usize, theta: f32, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let dy = random_vec(&mut r, shape.iter().product());
    let t = ok(gpu.upload(&dy, &shape))?;
    for style in [RopeStyle::Adjacent, RopeStyle::Half] {
        let rot = Rope::plain(theta as f64, shape[3], style);
        let got = ok(gpu.download(&ok(rope_bwd(gpu, &t, pos0, &rot))?))?;
        let want = cpu::rope_bwd(&dy, shape, pos0, &rot);
        // Same f32 angle error as the forward (positions stay below 80 here, see tests/rope.rs).
        compare(&format!("rope_bwd {style:?} {shape:?} pos0={pos0}"), &got, &want, Tolerance::F32)?;
        // The transpose of a rotation is its inverse: rope_bwd(rope(x)) = x.
        let back = ok(gpu.download(&ok(rope_bwd(gpu, &ok(rope(gpu, &t, pos0, &rot))?, pos0, &rot))?))?;
        let want: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
        compare(&format!("rope_bwd(rope) {style:?} {shape:?}"), &back, &want, Tolerance::F32)?;
    }
    Ok(())
}

#[test]
fn rope_bwd_matches_oracle() {
    for_each_gpu(|gpu| {
        let cases: &[([usize; 4], usize, f32)] =
            &[([1, 1, 1, 2], 3, 10_000.0), ([2, 13, 9, 64], 0, 100_000.0), ([3, 5, 7, 6], 11, 10_000.0), ([1, 17, 5, 128], 40, 1_000_000.0)];
        for (i, &(shape, pos0, theta)) in cases.iter().enumerate() {
            check(gpu, shape, pos0, theta, 3100 + i as u64)?;
        }
        Ok(())
    });
}

#[test]
fn rope_bwd_splits_rows_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check(gpu, [2, 13, 3, 64], 5, 10_000.0, 3200)?;
        check(gpu, [2, 500, 2, 6], 3, 10_000.0, 3201)
    });
}

/// `rope_bwd_stacked` on a stacked gradient [B·T, (Hq + 2·Hkv)·D] whose key and value columns
/// hold attention's gradients: the queries' columns from dq rotated back, the keys' rotated
/// back in place, the values' untouched — against the oracle of the dense parts.
fn check_stacked(gpu: &Gpu, [b, t, hq, hk, d]: [usize; 5], pos0: usize, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let n = (hq + 2 * hk) * d;
    let dq = random_vec(&mut r, b * t * hq * d);
    let start = random_vec(&mut r, b * t * n);
    let part = |from: usize, w: usize| -> Vec<f32> { start.chunks(n).flat_map(|row| row[from..from + w].to_vec()).collect() };
    for style in [RopeStyle::Adjacent, RopeStyle::Half] {
        // The query columns start poisoned: the kernel must write every one.
        let mut init = start.clone();
        init.chunks_mut(n).for_each(|row| row[..hq * d].fill(f32::NAN));
        let stacked = ok(gpu.upload(&init, &[b * t, n]))?;
        ok(rope_bwd_stacked(gpu, &ok(gpu.upload(&dq, &[b, t, hq, d]))?, &stacked, Heads { q: hq, kv: hk, dim: d }, pos0, &plain(d, style)))?;
        let got = ok(gpu.download(&stacked))?;
        let wq = cpu::rope_bwd(&dq, [b, t, hq, d], pos0, &plain(d, style));
        let wk = cpu::rope_bwd(&part(hq * d, hk * d), [b, t, hk, d], pos0, &plain(d, style));
        let want: Vec<f64> = (0..b * t)
            .flat_map(|row| {
                let v = part((hq + hk) * d, hk * d);
                let mut out = wq[row * hq * d..(row + 1) * hq * d].to_vec();
                out.extend_from_slice(&wk[row * hk * d..(row + 1) * hk * d]);
                out.extend(v[row * hk * d..(row + 1) * hk * d].iter().map(|&x| x as f64));
                out
            })
            .collect();
        compare(&format!("rope_bwd_stacked {style:?} [{b}, {t}, {hq} + 2 × {hk}, {d}] pos0={pos0}"), &got, &want, Tolerance::F32)?;
    }
    Ok(())
}

#[test]
fn rope_bwd_stacked_matches_the_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(dims, pos0)) in [([1, 1, 1, 1, 2], 3), ([2, 13, 9, 3, 64], 0), ([3, 5, 7, 1, 6], 11), ([1, 17, 5, 5, 128], 40)].iter().enumerate() {
            check_stacked(gpu, dims, pos0, 3400 + i as u64)?;
        }
        // Too large for one dispatch: the dense copies' way.
        let small = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check_stacked(small, [2, 13, 3, 1, 16], 5, 3410)?;
        let bad = ok(gpu.empty(&[3, 7]))?;
        match rope_bwd_stacked(gpu, &ok(gpu.empty(&[1, 3, 1, 2]))?, &bad, Heads { q: 1, kv: 1, dim: 2 }, 0, &plain(2, RopeStyle::Half)) {
            Err(e) if e.to_string().contains("rope_bwd_stacked") => Ok(()),
            other => Err(format!("a stacked gradient of the wrong width: {:?}", other.map(|_| ()))),
        }
    });
}

#[test]
fn rope_bwd_oracle_matches_finite_differences() {
    let mut r = rng(3300);
    for style in [RopeStyle::Adjacent, RopeStyle::Half] {
        for (d, pos) in [(2, 3), (6, 11), (64, 70)] {
            let x: Vec<f64> = random_vec(&mut r, d).into_iter().map(f64::from).collect();
            let dy: Vec<f64> = random_vec(&mut r, d).into_iter().map(f64::from).collect();
            let f = |x: &[f64]| {
                let mut y = x.to_vec();
                rope_head(&mut y, pos, &plain(d, style));
                y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
            };
            let mut g = dy.clone();
            rope_head_bwd(&mut g, pos, &plain(d, style));
            check_gradient(&format!("rope {style:?} d={d}"), f, &x, &g, 64, 1e-5, 1e-6).unwrap();
        }
    }
}

#[test]
fn rope_bwd_rejects_bad_shapes() {
    for_each_gpu(|gpu| {
        let dy = ok(gpu.upload(&[0.0; 15], &[3, 5]))?;
        let err = rope_bwd(gpu, &dy, 0, &plain(6, RopeStyle::Half)).err().ok_or("rope_bwd accepted a 2-D dy")?.to_string();
        if !(err.contains("rope_bwd") && err.contains("dy")) {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// Unscaled RoPE with SmolLM2's base over heads of d.
fn plain(d: usize, style: RopeStyle) -> Rope {
    Rope::plain(10_000.0, d, style)
}
