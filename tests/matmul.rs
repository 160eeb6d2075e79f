//! GEMM on every adapter against the f64 oracle: every kernel, all transposes, batches,
//! broadcasting, alpha/beta, aligned and awkward shapes.

mod common;
use common::*;
use revive::cpu;
use revive::ops::matmul::{gemm, Gemm, Kernel, KERNELS};

/// f32 dot products of length k with entries in [-1, 1]: entries of C are ~sqrt(k/9) and the
/// rounding error grows like sqrt(k) * eps, so atol scales with sqrt(k).
fn tol(k: usize) -> Tolerance {
    Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5, 1e-5)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batched: bool,
    b_batched: bool,
}

const fn case(batch: usize, m: usize, n: usize, k: usize) -> Case {
    Case { batch, m, n, k, a_batched: batch > 1, b_batched: batch > 1 }
}

// 1, primes, non-multiples of the 16 and 128 tiles, multiples of 4 (the vec4 path), and K not
// a multiple of the K step.
const CASES: &[Case] = &[
    case(1, 1, 1, 1),
    case(1, 1, 7, 13),
    case(1, 17, 1, 5),
    case(1, 2, 9, 6),
    case(2, 3, 12, 10),
    case(1, 31, 37, 41),
    case(1, 128, 128, 8),
    case(1, 129, 127, 131),
    case(1, 64, 196, 36),
    case(3, 65, 33, 97),
    case(2, 200, 260, 96),
    case(1, 257, 509, 263),
];

fn check(gpu: &revive::Gpu, c: Case, trans_a: bool, trans_b: bool, kernel: Kernel, alpha: f32, beta: f32, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let a_shape = |rows, cols| if c.a_batched { vec![c.batch, rows, cols] } else { vec![rows, cols] };
    let b_shape = |rows, cols| if c.b_batched { vec![c.batch, rows, cols] } else { vec![rows, cols] };
    let sa = if trans_a { a_shape(c.k, c.m) } else { a_shape(c.m, c.k) };
    let sb = if trans_b { b_shape(c.n, c.k) } else { b_shape(c.k, c.n) };
    let av = random_vec(&mut r, sa.iter().product());
    let bv = random_vec(&mut r, sb.iter().product());
    let cv = random_vec(&mut r, c.batch * c.m * c.n);
    let a = ok(gpu.upload(&av, &sa))?;
    let b = ok(gpu.upload(&bv, &sb))?;
    let batched = c.a_batched || c.b_batched;
    let out_shape = if batched { vec![c.batch, c.m, c.n] } else { vec![c.m, c.n] };
    let g = Gemm { trans_a, trans_b, alpha, beta, kernel };
    let out = if beta != 0.0 {
        let ct = ok(gpu.upload(&cv, &out_shape))?;
        ok(gemm(gpu, &a, &b, Some(&ct), g))?
    } else {
        ok(gemm(gpu, &a, &b, None, g))?
    };
    let got = ok(gpu.download(&out))?;
    let want = cpu::gemm(&av, &bv, Some(&cv), c.batch, c.m, c.n, c.k, trans_a, trans_b, c.a_batched, c.b_batched, alpha as f64, beta as f64);
    compare(&format!("{kernel:?} {c:?} ta={trans_a} tb={trans_b} alpha={alpha} beta={beta}"), &got, &want, tol(c.k))
}

#[test]
fn tuned_and_pipelined_match_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Tuned, 1.0, 0.0, i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Pipelined, 1.0, 0.0, 800 + i as u64)?;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn rows32_matches_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Rows32, 1.0, 0.0, 500 + i as u64)?;
                }
            }
        }
        // Auto picks it for a few dozen rows: the prompts of an edit.
        check(gpu, case(1, 37, 131, 576), false, true, Kernel::Auto, 1.0, 0.0, 550)?;
        Ok(())
    });
}

#[test]
fn tile16_matches_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Tile16, 1.0, 0.0, 100 + i as u64)?;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn dot_gemv_and_block_match_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Dot, 1.0, 0.0, 400 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Gemv, 1.0, 0.0, 600 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Block, 1.0, 0.0, 700 + i as u64)?;
                }
            }
        }
        // Auto's choice for a single row (the decode step) and for a few.
        check(gpu, case(1, 1, 577, 576), false, true, Kernel::Auto, 1.0, 0.0, 450)?;
        check(gpu, case(2, 3, 100, 64), false, true, Kernel::Auto, 1.0, 0.0, 451)?;
        Ok(())
    });
}

#[test]
fn alpha_beta_accumulate_into_c() {
    for_each_gpu(|gpu| {
        for kernel in KERNELS {
            for (i, &c) in CASES.iter().enumerate() {
                check(gpu, c, i % 2 == 0, i % 3 == 0, kernel, -1.5, 0.5, 200 + i as u64)?;
            }
        }
        Ok(())
    });
}

#[test]
fn shared_operand_broadcasts_over_the_batch() {
    for_each_gpu(|gpu| {
        for kernel in [Kernel::Tuned, Kernel::Pipelined, Kernel::Rows32, Kernel::Tile16, Kernel::Gemv, Kernel::Block] {
            let a_only = Case { a_batched: true, b_batched: false, ..case(4, 33, 29, 70) };
            let b_only = Case { a_batched: false, b_batched: true, ..case(3, 40, 52, 16) };
            check(gpu, a_only, false, true, kernel, 1.0, 0.0, 300)?;
            check(gpu, b_only, true, false, kernel, 2.0, 0.0, 301)?;
        }
        Ok(())
    });
}

#[test]
fn shape_errors_are_reported_not_panics() {
    for_each_gpu(|gpu| {
        let a = ok(gpu.upload(&[0.0; 6], &[2, 3]))?;
        let b = ok(gpu.upload(&[0.0; 8], &[4, 2]))?;
        let err = gemm(gpu, &a, &b, None, Gemm::default()).err().ok_or("mismatched K accepted")?;
        if !err.to_string().contains("inner dimensions") {
            return Err(format!("unexpected message: {err}"));
        }
        let x = ok(gpu.upload(&[0.0; 8], &[2, 2, 2]))?;
        let y = ok(gpu.upload(&[0.0; 12], &[3, 2, 2]))?;
        gemm(gpu, &x, &y, None, Gemm::default()).err().ok_or("mismatched batch accepted")?;
        gemm(gpu, &a, &a, None, Gemm { beta: 1.0, ..Gemm::default() }).err().ok_or("beta without C accepted")?;
        Ok(())
    });
}
