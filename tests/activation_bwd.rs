//! SwiGLU and GELU backward on every adapter against the f64 oracle, and the oracle against
//! central differences of the f64 forward.

mod common;
use common::*;
use revive::cpu;
use revive::cpu::activation::{gelu_grad, gelu_scalar, silu, silu_grad};
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::activation::{gelu_bwd, silu_mul_bwd, silu_mul_bwd_halves};

const SHAPES: &[&[usize]] = &[&[1], &[1, 1], &[7, 1], &[13, 257], &[3, 4099], &[500, 3], &[2, 5, 1536]];

fn check(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let n: usize = shape.iter().product();
    let mut r = rng(seed);
    // [-8, 8) reaches the saturated tails of the sigmoid and of tanh.
    let x: Vec<f32> = random_vec(&mut r, n).into_iter().map(|v| 8.0 * v).collect();
    let up = random_vec(&mut r, n);
    let dy = random_vec(&mut r, n);
    let (tx, tu, td) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&up, shape))?, ok(gpu.upload(&dy, shape))?);
    let (dg, du) = ok(silu_mul_bwd(gpu, &tx, &tu, &td))?;
    let (wg, wu) = cpu::silu_mul_bwd(&x, &up, &dy);
    compare(&format!("silu_mul_bwd d_gate {shape:?}"), &ok(gpu.download(&dg))?, &wg, Tolerance::F32)?;
    compare(&format!("silu_mul_bwd d_up {shape:?}"), &ok(gpu.download(&du))?, &wu, Tolerance::F32)?;
    let got = ok(gpu.download(&ok(gelu_bwd(gpu, &tx, &td))?))?;
    compare(&format!("gelu_bwd {shape:?}"), &got, &cpu::gelu_bwd(&x, &dy), GELU_BWD)
}

/// `silu_mul_bwd_halves` on gate and up stacked in each row's halves, against the oracle of the
/// separate tensors (poisoned output: every element must be written).
fn check_halves(gpu: &Gpu, rows: usize, cols: usize, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let gate: Vec<f32> = random_vec(&mut r, rows * cols).into_iter().map(|v| 8.0 * v).collect();
    let up = random_vec(&mut r, rows * cols);
    let dy = random_vec(&mut r, rows * cols);
    let gate_up: Vec<f32> = (0..rows).flat_map(|i| gate[i * cols..(i + 1) * cols].iter().chain(&up[i * cols..(i + 1) * cols]).copied().collect::<Vec<_>>()).collect();
    let t = ok(gpu.upload(&gate_up, &[rows, 2 * cols]))?;
    let got = ok(gpu.download(&ok(silu_mul_bwd_halves(gpu, &t, &ok(gpu.upload(&dy, &[rows, cols]))?))?))?;
    let (wg, wu) = cpu::silu_mul_bwd(&gate, &up, &dy);
    let want: Vec<f64> = (0..rows).flat_map(|i| wg[i * cols..(i + 1) * cols].iter().chain(&wu[i * cols..(i + 1) * cols]).copied().collect::<Vec<_>>()).collect();
    compare(&format!("silu_mul_bwd_halves {rows}x{cols}"), &got, &want, Tolerance::F32)
}

#[test]
fn silu_mul_bwd_halves_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in [(1, 1), (7, 1), (1, 257), (13, 37), (5, 1536), (300, 3)].iter().enumerate() {
            check_halves(gpu, rows, cols, 2400 + i as u64)?;
        }
        // Pieces of whole rows, across dispatches and bindings.
        let small = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check_halves(small, 50, 37, 2410)?;
        check_halves(small, 3, 301, 2411)?;
        let t = ok(gpu.upload(&[0.0; 6], &[2, 3]))?;
        let bad = ok(gpu.upload(&[0.0; 6], &[2, 3]))?;
        match silu_mul_bwd_halves(gpu, &t, &bad) {
            Err(e) if e.to_string().contains("silu_mul_bwd_halves") => Ok(()),
            other => Err(format!("gate_up of an odd last dimension: {:?}", other.map(|_| ()))),
        }
    });
}

/// Deep in the negative tail gelu' ~ exp(−2u) is ~1e-13 and f32 exp of an argument ~35 is off
/// by ~1e-5 relative: harmless in absolute terms (atol bounds each element), but a vector of
/// only such values (the one-element shapes) has a rel-norm that large.
const GELU_BWD: Tolerance = Tolerance { atol: 1e-5, rtol: 1e-5, rel_norm: 1e-4 };

#[test]
fn activation_bwd_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, shape) in SHAPES.iter().enumerate() {
            check(gpu, shape, 2100 + i as u64)?;
        }
        let x = [-100.0f32, -30.0, -0.0, 0.0, 1e-7, 30.0, 100.0];
        let t = ok(gpu.upload(&x, &[x.len()]))?;
        let got = ok(gpu.download(&ok(gelu_bwd(gpu, &t, &t))?))?;
        compare("gelu_bwd tails", &got, &cpu::gelu_bwd(&x, &x), GELU_BWD)?;
        let (dg, du) = ok(silu_mul_bwd(gpu, &t, &t, &t))?;
        let (wg, wu) = cpu::silu_mul_bwd(&x, &x, &x);
        compare("silu_mul_bwd d_gate tails", &ok(gpu.download(&dg))?, &wg, Tolerance::F32)?;
        compare("silu_mul_bwd d_up tails", &ok(gpu.download(&du))?, &wu, Tolerance::F32)
    });
}

#[test]
fn activation_bwd_splits_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check(gpu, &[50, 37], 2200)?;
        check(gpu, &[3, 1001], 2201)
    });
}

#[test]
fn activation_bwd_oracle_matches_finite_differences() {
    let xs: Vec<f64> = (0..41).map(|i| -8.0 + 0.4 * i as f64 + 0.013).collect();
    let g: Vec<f64> = xs.iter().map(|&x| gelu_grad(x)).collect();
    check_gradient("gelu", |x| x.iter().map(|&v| gelu_scalar(v)).sum(), &xs, &g, 41, 1e-5, 1e-6).unwrap();
    let g: Vec<f64> = xs.iter().map(|&x| silu_grad(x)).collect();
    check_gradient("silu", |x| x.iter().map(|&v| silu(v)).sum(), &xs, &g, 41, 1e-5, 1e-6).unwrap();
    // d_up and the dy weighting, through the vector-level oracle.
    let mut r = rng(2300);
    let (gate, up, dy) = (random_vec(&mut r, 9), random_vec(&mut r, 9), random_vec(&mut r, 9));
    let (dg, du) = cpu::silu_mul_bwd(&gate, &up, &dy);
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (g64, u64s, d64) = (f64s(&gate), f64s(&up), f64s(&dy));
    let loss = |g: &[f64], u: &[f64]| g.iter().zip(u).zip(&d64).map(|((g, u), d)| d * silu(*g) * u).sum::<f64>();
    check_gradient("silu_mul d_gate", |g| loss(g, &u64s), &g64, &dg, 9, 1e-5, 1e-6).unwrap();
    check_gradient("silu_mul d_up", |u| loss(&g64, u), &u64s, &du, 9, 1e-5, 1e-6).unwrap();
}

#[test]
fn activation_bwd_rejects_mismatched_shapes() {
    for_each_gpu(|gpu| {
        let a = ok(gpu.upload(&[0.0; 12], &[3, 4]))?;
        let b = ok(gpu.upload(&[0.0; 12], &[4, 3]))?;
        let err = silu_mul_bwd(gpu, &a, &a, &b).err().ok_or("silu_mul_bwd accepted dy [4, 3]")?.to_string();
        if !(err.contains("silu_mul_bwd") && err.contains("dy")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = silu_mul_bwd(gpu, &a, &b, &a).err().ok_or("silu_mul_bwd accepted up [4, 3]")?.to_string();
        if !(err.contains("silu_mul_bwd") && err.contains("up")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = gelu_bwd(gpu, &a, &b).err().ok_or("gelu_bwd accepted dy [4, 3]")?.to_string();
        if !(err.contains("gelu_bwd") && err.contains("dy")) {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}
