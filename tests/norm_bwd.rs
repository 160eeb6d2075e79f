//! RMSNorm and LayerNorm backward (dx) on every adapter against the f64 oracle, and the oracle
//! against central differences of the f64 forward.

mod common;
use common::*;
use revive::cpu;
use revive::cpu::norm::{layer_norm_bwd_row, layer_norm_row, rms_norm_bwd_row, rms_norm_row};
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::elementwise::add;
use revive::ops::norm::{layer_norm_bwd, layer_norm_bwd_into, rms_norm_bwd, rms_norm_bwd_into};

const SHAPES: &[&[usize]] = &[&[1, 1], &[1, 7], &[7, 1], &[13, 257], &[3, 4099], &[500, 3], &[2, 5, 576], &[64, 768]];

/// dx sums n products and then subtracts two terms of similar size, so its f32 error is a few
/// ulps of |dy w r|, not of |dx|: atol 1e-5 (elements are O(1)), rel-norm 1e-5.
fn check(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let d = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let mut r = rng(seed);
    let x: Vec<f32> = random_vec(&mut r, n).into_iter().map(|v| 3.0 * v + 0.5).collect();
    let w = random_vec(&mut r, d);
    let dy = random_vec(&mut r, n);
    let (tx, tw, tdy) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&w, &[d]))?, ok(gpu.upload(&dy, shape))?);
    let eps = 1e-5;
    // With one column the two terms of dx cancel exactly but for eps (rms: dx = r w dy ·
    // eps / (x² + eps); layer: dx = 0), so the result is rounding noise on O(1) terms: only the
    // elementwise atol is meaningful there.
    let tol = Tolerance::new(1e-5, 1e-5, if d == 1 { f64::INFINITY } else { 1e-5 });
    let got = ok(gpu.download(&ok(rms_norm_bwd(gpu, &tx, &tw, &tdy, eps))?))?;
    compare(&format!("rms_norm_bwd {shape:?}"), &got, &cpu::rms_norm_bwd(&x, &w, &dy, eps as f64), tol)?;
    let got = ok(gpu.download(&ok(layer_norm_bwd(gpu, &tx, &tw, &tdy, eps))?))?;
    compare(&format!("layer_norm_bwd {shape:?}"), &got, &cpu::layer_norm_bwd(&x, &w, &dy, eps as f64), tol)
}

#[test]
fn norm_bwd_matches_oracle() {
    for_each_gpu(|gpu| {
        for_each_row_threads(gpu, |gpu| {
            for (i, shape) in SHAPES.iter().enumerate() {
                check(gpu, shape, 1100 + i as u64)?;
            }
            Ok(())
        })
    });
}

/// The accumulating entries: acc + dx, bit for bit what the separate kernel and an add give
/// (the backward of a block relies on that), against the oracle too.
fn check_into(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let d = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let mut r = rng(seed);
    let x: Vec<f32> = random_vec(&mut r, n).into_iter().map(|v| 3.0 * v + 0.5).collect();
    let (w, dy, acc) = (random_vec(&mut r, d), random_vec(&mut r, n), random_vec(&mut r, n));
    let (tx, tw, tdy) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&w, &[d]))?, ok(gpu.upload(&dy, shape))?);
    let eps = 1e-5;
    let tol = Tolerance::new(1e-5, 1e-5, if d == 1 { f64::INFINITY } else { 1e-5 });
    type Into = fn(&Gpu, &revive::Tensor, &revive::Tensor, &revive::Tensor, f32, &revive::Tensor) -> revive::Result<()>;
    type Plain = fn(&Gpu, &revive::Tensor, &revive::Tensor, &revive::Tensor, f32) -> revive::Result<revive::Tensor>;
    let kinds: [(&str, Into, Plain, Vec<f64>); 2] = [
        ("rms_norm_bwd_into", rms_norm_bwd_into, rms_norm_bwd, cpu::rms_norm_bwd(&x, &w, &dy, eps as f64)),
        ("layer_norm_bwd_into", layer_norm_bwd_into, layer_norm_bwd, cpu::layer_norm_bwd(&x, &w, &dy, eps as f64)),
    ];
    for (name, into, plain, dx) in kinds {
        let tacc = ok(gpu.upload(&acc, shape))?;
        ok(into(gpu, &tx, &tw, &tdy, eps, &tacc))?;
        let got = ok(gpu.download(&tacc))?;
        let want: Vec<f64> = acc.iter().zip(&dx).map(|(a, g)| *a as f64 + g).collect();
        compare(&format!("{name} {shape:?}"), &got, &want, tol)?;
        let separate = ok(gpu.download(&ok(add(gpu, &ok(gpu.upload(&acc, shape))?, &ok(plain(gpu, &tx, &tw, &tdy, eps))?))?))?;
        if got.iter().zip(&separate).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(format!("{name} {shape:?} differs in its bits from the kernel and an add"));
        }
    }
    // The gradient to add into may not be what the kernel reads.
    let err = rms_norm_bwd_into(gpu, &tx, &tw, &tdy, eps, &tdy).err().ok_or("rms_norm_bwd_into accepted dy as its accumulator")?.to_string();
    if !err.contains("shares a buffer") {
        return Err(format!("unexpected message: {err}"));
    }
    Ok(())
}

#[test]
fn norm_bwd_into_adds_to_the_gradient_it_is_given() {
    for_each_gpu(|gpu| {
        for_each_row_threads(gpu, |gpu| {
            for (i, shape) in SHAPES.iter().enumerate() {
                check_into(gpu, shape, 1300 + i as u64)?;
            }
            Ok(())
        })?;
        // Rows split across dispatches.
        check_into(&gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 }), &[50, 37], 1350)
    });
}

#[test]
fn norm_bwd_splits_rows_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check(gpu, &[50, 37], 1200)?;
        check(gpu, &[2, 7, 300], 1201)
    });
}

fn vecs(seed: u64, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut r = rng(seed);
    let f = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    (f(random_vec(&mut r, n)).iter().map(|v| 2.0 * v + 0.3).collect(), f(random_vec(&mut r, n)), f(random_vec(&mut r, n)))
}

#[test]
fn norm_bwd_oracle_matches_finite_differences() {
    for (n, eps) in [(1, 1e-5), (7, 1e-5), (33, 1e-2)] {
        let (x, w, dy) = vecs(1300 + n as u64, n);
        let dot = |y: Vec<f64>| y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
        let g = rms_norm_bwd_row(&x, &w, &dy, eps);
        check_gradient(&format!("rms_norm n={n}"), |x| dot(rms_norm_row(x, &w, eps)), &x, &g, 64, 1e-5, 1e-6).unwrap();
        let b = vec![0.25; n];
        let g = layer_norm_bwd_row(&x, &w, &dy, eps);
        check_gradient(&format!("layer_norm n={n}"), |x| dot(layer_norm_row(x, &w, &b, eps)), &x, &g, 64, 1e-5, 1e-6).unwrap();
    }
}

#[test]
fn check_gradient_rejects_a_wrong_gradient() {
    let (x, w, dy) = vecs(1400, 9);
    let dot = |y: Vec<f64>| y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let f = |x: &[f64]| dot(rms_norm_row(x, &w, 1e-5));
    let good = rms_norm_bwd_row(&x, &w, &dy, 1e-5);
    check_gradient("good", f, &x, &good, 9, 1e-5, 1e-6).unwrap();
    // Off by 0.1% everywhere, and exact but for one coordinate: both must be caught.
    let scaled: Vec<f64> = good.iter().map(|g| g * 1.001).collect();
    assert!(check_gradient("scaled", f, &x, &scaled, 9, 1e-5, 1e-6).is_err());
    let mut one = good.clone();
    one[4] += 1e-3;
    assert!(check_gradient("one coordinate", f, &x, &one, 9, 1e-5, 1e-6).is_err());
}

#[test]
fn norm_bwd_rejects_mismatched_shapes() {
    for_each_gpu(|gpu| {
        let x = ok(gpu.upload(&[0.0; 12], &[3, 4]))?;
        let w = ok(gpu.upload(&[1.0; 4], &[4]))?;
        let w3 = ok(gpu.upload(&[1.0; 3], &[3]))?;
        let dy = ok(gpu.upload(&[0.0; 8], &[2, 4]))?;
        let err = rms_norm_bwd(gpu, &x, &w, &dy, 1e-5).err().ok_or("rms_norm_bwd accepted dy [2, 4] for x [3, 4]")?.to_string();
        if !(err.contains("rms_norm_bwd") && err.contains("dy")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = layer_norm_bwd(gpu, &x, &w3, &x, 1e-5).err().ok_or("layer_norm_bwd accepted a [3] weight")?.to_string();
        if !(err.contains("layer_norm_bwd") && err.contains("weight")) {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}
