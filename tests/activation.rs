//! SwiGLU, GELU and bias broadcast on every adapter against the f64 oracle.

mod common;
use common::*;
use revive::cpu;
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::activation::{add_bias, gelu, silu_mul, silu_mul_halves};

const SHAPES: &[&[usize]] = &[&[1], &[1, 1], &[7, 1], &[13, 257], &[3, 4099], &[500, 3], &[2, 5, 1536], &[257, 256]];

fn check(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let n: usize = shape.iter().product();
    let cols = *shape.last().unwrap();
    let mut r = rng(seed);
    // Inputs in [-8, 8) reach both saturated tails of the sigmoid and of tanh.
    let x: Vec<f32> = random_vec(&mut r, n).into_iter().map(|v| 8.0 * v).collect();
    let y = random_vec(&mut r, n);
    let b = random_vec(&mut r, cols);
    let (tx, ty, tb) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&y, shape))?, ok(gpu.upload(&b, &[cols]))?);
    let got = ok(gpu.download(&ok(silu_mul(gpu, &tx, &ty))?))?;
    compare(&format!("silu_mul {shape:?}"), &got, &cpu::silu_mul(&x, &y), Tolerance::F32)?;
    let got = ok(gpu.download(&ok(gelu(gpu, &tx))?))?;
    compare(&format!("gelu {shape:?}"), &got, &cpu::gelu(&x), Tolerance::F32)?;
    let got = ok(gpu.download(&ok(add_bias(gpu, &tx, &tb))?))?;
    compare(&format!("add_bias {shape:?}"), &got, &cpu::add_bias(&x, &b), Tolerance::F32)
}

/// SwiGLU on the stacked gate/up product [rows, 2F], read through a view that starts `pad`
/// elements into its buffer (how a fused weight's output would never be, but a view may).
fn check_halves(gpu: &Gpu, rows: usize, f: usize, pad: usize, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let x: Vec<f32> = random_vec(&mut r, pad + rows * 2 * f).into_iter().map(|v| 8.0 * v).collect();
    let whole = ok(gpu.upload(&x, &[x.len()]))?;
    let gate_up = ok(whole.view(pad, &[rows, 2 * f]))?;
    let (mut gate, mut up) = (vec![], vec![]);
    for row in x[pad..].chunks(2 * f) {
        gate.extend_from_slice(&row[..f]);
        up.extend_from_slice(&row[f..]);
    }
    let out = ok(silu_mul_halves(gpu, &gate_up))?;
    if out.shape() != [rows, f] {
        return Err(format!("silu_mul_halves {rows}×2·{f}: output {:?}", out.shape()));
    }
    compare(&format!("silu_mul_halves {rows}×2·{f} at {pad}"), &ok(gpu.download(&out))?, &cpu::silu_mul(&gate, &up), Tolerance::F32)
}

#[test]
fn swiglu_of_stacked_halves_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(rows, f, pad)) in [(1, 1, 0), (7, 3, 5), (13, 257, 1), (3, 1536, 0), (500, 2, 3)].iter().enumerate() {
            check_halves(gpu, rows, f, pad, 950 + i as u64)?;
        }
        let small = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check_halves(small, 50, 37, 2, 960)?;
        let err = silu_mul_halves(gpu, &ok(gpu.full(&[2, 3], 0.0))?).err().ok_or("an odd row accepted")?;
        if !err.to_string().contains("even") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

#[test]
fn activations_match_oracle() {
    for_each_gpu(|gpu| {
        for (i, shape) in SHAPES.iter().enumerate() {
            check(gpu, shape, 800 + i as u64)?;
        }
        // Far tails: no NaN where exp overflows.
        let x = [-100.0f32, -30.0, -0.0, 0.0, 1e-7, 30.0, 100.0];
        let t = ok(gpu.upload(&x, &[x.len()]))?;
        compare("gelu tails", &ok(gpu.download(&ok(gelu(gpu, &t))?))?, &cpu::gelu(&x), Tolerance::F32)?;
        compare("silu_mul tails", &ok(gpu.download(&ok(silu_mul(gpu, &t, &t))?))?, &cpu::silu_mul(&x, &x), Tolerance::F32)?;
        Ok(())
    });
}

#[test]
fn activations_split_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        // Pieces of about 1000 elements that start mid-row: the bias column must follow.
        check(gpu, &[50, 37], 900)?;
        check(gpu, &[3, 1001], 901)
    });
}

#[test]
fn activations_reject_bad_shapes() {
    for_each_gpu(|gpu| {
        let x = ok(gpu.full(&[3, 4], 0.0))?;
        let b = ok(gpu.full(&[3], 0.0))?;
        let err = add_bias(gpu, &x, &b).err().ok_or("a [3] bias for rows of 4 accepted")?;
        if !err.to_string().contains("bias") {
            return Err(format!("unexpected message: {err}"));
        }
        let err = silu_mul(gpu, &x, &ok(gpu.full(&[4, 3], 0.0))?).err().ok_or("mismatched gate and up accepted")?;
        if !err.to_string().contains("gate") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// silu(gate)·up times a matrix in one dispatch (`silu_mul_matvec`, a decoded token's MLP
/// down-projection) against the f64 oracle: with and without a residual added in place, rows
/// 1–4, activation widths 1, 7, 63, 1536 (SmolLM2) and 4099, outputs 1 to 3,000; at a
/// 3-workgroup, 4 KiB limit (several dispatches) too; a residual held elsewhere or a matrix of
/// the wrong width is refused.
#[test]
fn silu_mul_and_product_in_one_dispatch_match_oracle() {
    use revive::ops::activation::silu_mul_matvec;
    fn check(gpu: &Gpu, rows: usize, f: usize, n: usize, seed: u64) -> Result<(), String> {
        let mut r = rng(seed);
        let gate_up: Vec<f32> = random_vec(&mut r, rows * 2 * f).into_iter().map(|v| 4.0 * v).collect();
        let m = random_vec(&mut r, n * f);
        let res = random_vec(&mut r, rows * n);
        let (gate, up): (Vec<f32>, Vec<f32>) = (0..rows * f).map(|i| (gate_up[(i / f) * 2 * f + i % f], gate_up[(i / f) * 2 * f + f + i % f])).unzip();
        let act = cpu::silu_mul(&gate, &up);
        let product: Vec<f64> = (0..rows * n).map(|i| (0..f).map(|k| act[(i / n) * f + k] * m[(i % n) * f + k] as f64).sum()).collect();
        let tol = Tolerance::new(1e-5 * (f as f64).sqrt(), 1e-5, 1e-5);
        let (tg, tm) = (ok(gpu.upload(&gate_up, &[rows, 2 * f]))?, ok(gpu.upload(&m, &[n, f]))?);
        let label = format!("silu_mul_matvec {rows}×{f} · {n} ({})", gpu.label());
        compare(&label, &ok(gpu.download(&ok(silu_mul_matvec(gpu, &tg, &tm, None))?))?, &product, tol)?;
        let with_res: Vec<f64> = product.iter().zip(&res).map(|(p, &x)| p + x as f64).collect();
        let out = ok(silu_mul_matvec(gpu, &tg, &tm, Some(ok(gpu.upload(&res, &[rows, n]))?)))?;
        compare(&format!("{label} + residual"), &ok(gpu.download(&out))?, &with_res, tol)
    }
    for_each_gpu(|gpu| {
        for (i, &(rows, f, n)) in [(1, 1, 1), (1, 7, 13), (4, 1536, 576), (3, 63, 1), (2, 4099, 5), (1, 64, 3000)].iter().enumerate() {
            check(gpu, rows, f, n, 1300 + i as u64)?;
        }
        check(&gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 }), 2, 37, 50, 1310)?;
        let res = ok(gpu.full(&[1, 3], 1.0))?;
        let _other_holder = res.clone();
        let gu = ok(gpu.full(&[1, 8], 1.0))?;
        let shared = silu_mul_matvec(gpu, &gu, &ok(gpu.full(&[3, 4], 1.0))?, Some(res)).err().ok_or("a residual held elsewhere was written in place")?;
        let narrow = silu_mul_matvec(gpu, &gu, &ok(gpu.full(&[3, 5], 1.0))?, None).err().ok_or("a [3, 5] matrix for halves of 4 accepted")?;
        for err in [shared, narrow] {
            if !err.to_string().contains("silu_mul_matvec") {
                return Err(format!("unexpected message: {err}"));
            }
        }
        Ok(())
    });
}
