//! RMSNorm and LayerNorm on every adapter against the f64 oracle, on awkward shapes.

mod common;
use common::*;
use revive::cpu;
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::norm::{layer_norm, rms_norm, rms_norm_matvec};

const SHAPES: &[&[usize]] = &[&[1, 1], &[1, 7], &[7, 1], &[13, 257], &[3, 4099], &[500, 3], &[2, 5, 576], &[64, 768]];

fn check(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let d = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let mut r = rng(seed);
    // An offset mean makes LayerNorm's centring matter.
    let x: Vec<f32> = random_vec(&mut r, n).into_iter().map(|v| 3.0 * v + 0.5).collect();
    let w = random_vec(&mut r, d);
    let b = random_vec(&mut r, d);
    let (tx, tw, tb) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&w, &[d]))?, ok(gpu.upload(&b, &[d]))?);
    let eps = 1e-5;
    let got = ok(gpu.download(&ok(rms_norm(gpu, &tx, &tw, eps))?))?;
    compare(&format!("rms_norm {shape:?}"), &got, &cpu::rms_norm(&x, &w, eps as f64), Tolerance::F32)?;
    let got = ok(gpu.download(&ok(layer_norm(gpu, &tx, &tw, &tb, eps))?))?;
    compare(&format!("layer_norm {shape:?}"), &got, &cpu::layer_norm(&x, &w, &b, eps as f64), Tolerance::F32)
}

#[test]
fn norms_match_oracle() {
    for_each_gpu(|gpu| {
        for_each_row_threads(gpu, |gpu| {
            for (i, shape) in SHAPES.iter().enumerate() {
                check(gpu, shape, 100 + i as u64)?;
            }
            Ok(())
        })
    });
}

#[test]
fn norms_split_rows_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        // 50 rows in pieces of 3; rows of 300 also force pieces by binding size.
        check(gpu, &[50, 37], 200)?;
        check(gpu, &[2, 7, 300], 201)
    });
}

#[test]
fn norms_reject_mismatched_weights() {
    for_each_gpu(|gpu| {
        let x = ok(gpu.upload(&[0.0; 12], &[3, 4]))?;
        let w = ok(gpu.upload(&[1.0; 3], &[3]))?;
        let w4 = ok(gpu.upload(&[1.0; 4], &[4]))?;
        let err = rms_norm(gpu, &x, &w, 1e-5).err().ok_or("rms_norm accepted a [3] weight for rows of 4")?;
        if !err.to_string().contains("weight") {
            return Err(format!("unexpected message: {err}"));
        }
        let err = layer_norm(gpu, &x, &w4, &w, 1e-5).err().ok_or("layer_norm accepted a [3] bias for rows of 4")?;
        if !err.to_string().contains("bias") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// rms_norm(x) · mᵀ in one dispatch against the oracle's norm followed by an f64 product.
fn check_matvec(gpu: &Gpu, rows: usize, d: usize, n: usize, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let x: Vec<f32> = random_vec(&mut r, rows * d).into_iter().map(|v| 3.0 * v + 0.5).collect();
    let w = random_vec(&mut r, d);
    let m = random_vec(&mut r, n * d);
    let eps = 1e-5;
    let h = cpu::rms_norm(&x, &w, eps as f64);
    let want: Vec<f64> = (0..rows * n).map(|i| (0..d).map(|k| h[(i / n) * d + k] * m[(i % n) * d + k] as f64).sum()).collect();
    let t = |v: &[f32], shape: &[usize]| ok(gpu.upload(v, shape));
    let got = ok(gpu.download(&ok(rms_norm_matvec(gpu, &t(&x, &[rows, d])?, &t(&w, &[d])?, &t(&m, &[n, d])?, eps))?))?;
    compare(&format!("rms_norm_matvec {rows}×{d} · {n}"), &got, &want, Tolerance::new(1e-5 * (d as f64).sqrt(), 1e-5, 1e-5))
}

#[test]
fn norm_and_product_in_one_dispatch_match_oracle() {
    for_each_gpu(|gpu| {
        for_each_row_threads(gpu, |gpu| {
            for (i, &(rows, d, n)) in [(1, 1, 1), (1, 7, 13), (4, 576, 960), (3, 257, 1), (2, 4099, 5), (1, 64, 3000)].iter().enumerate() {
                check_matvec(gpu, rows, d, n, 1200 + i as u64)?;
            }
            Ok(())
        })?;
        let small = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check_matvec(small, 2, 37, 50, 1210)?;
        let x = ok(gpu.full(&[2, 4], 1.0))?;
        let err = rms_norm_matvec(gpu, &x, &ok(gpu.full(&[4], 1.0))?, &ok(gpu.full(&[3, 5], 1.0))?, 1e-5).err().ok_or("a [3, 5] matrix for rows of 4 accepted")?;
        if !err.to_string().contains("rms_norm_matvec") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}
