//! Linear-layer backward is GEMM with transposes: for C = A·B, dA = dC·Bᵀ and dB = Aᵀ·dC.
//! Checked on every adapter against the f64 oracle, and the oracle against central differences
//! of Σ dC · (A·B).

mod common;
use common::*;
use revive::cpu;
use revive::gpu::SplitLimits;
use revive::ops::matmul::{gemm, Gemm};

/// Same bound as tests/matmul.rs: f32 dot products of length k grow their error like sqrt(k).
fn tol(k: usize) -> Tolerance {
    Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5, 1e-5)
}

#[test]
fn matmul_backward_is_gemm() {
    // (M, K, N): 1, primes, non-multiples of the 16 / 128 tiles.
    let cases = [(1, 1, 1), (7, 13, 5), (31, 37, 41), (129, 64, 257), (3, 576, 49)];
    for_each_gpu(|gpu| {
        for (ci, &(m, k, n)) in cases.iter().enumerate() {
            let mut r = rng(7100 + ci as u64);
            let (a, b, dc) = (random_vec(&mut r, m * k), random_vec(&mut r, k * n), random_vec(&mut r, m * n));
            let (ta, tb, tdc) = (ok(gpu.upload(&a, &[m, k]))?, ok(gpu.upload(&b, &[k, n]))?, ok(gpu.upload(&dc, &[m, n]))?);
            let da = ok(gemm(gpu, &tdc, &tb, None, Gemm { trans_b: true, ..Gemm::default() }))?;
            let db = ok(gemm(gpu, &ta, &tdc, None, Gemm { trans_a: true, ..Gemm::default() }))?;
            if da.shape() != [m, k] || db.shape() != [k, n] {
                return Err(format!("dA {:?}, dB {:?}", da.shape(), db.shape()));
            }
            let want_da = cpu::gemm(&dc, &b, None, 1, m, k, n, false, true, false, false, 1.0, 0.0);
            let want_db = cpu::gemm(&a, &dc, None, 1, k, n, m, true, false, false, false, 1.0, 0.0);
            compare(&format!("dA ({m}x{k}x{n})"), &ok(gpu.download(&da))?, &want_da, tol(n))?;
            compare(&format!("dB ({m}x{k}x{n})"), &ok(gpu.download(&db))?, &want_db, tol(m))?;
        }
        // Split across dispatches: the same identities with tiny limits.
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        let (m, k, n) = (37, 29, 53);
        let mut r = rng(7200);
        let (a, b, dc) = (random_vec(&mut r, m * k), random_vec(&mut r, k * n), random_vec(&mut r, m * n));
        let (ta, tb, tdc) = (ok(gpu.upload(&a, &[m, k]))?, ok(gpu.upload(&b, &[k, n]))?, ok(gpu.upload(&dc, &[m, n]))?);
        let da = ok(gemm(gpu, &tdc, &tb, None, Gemm { trans_b: true, ..Gemm::default() }))?;
        let db = ok(gemm(gpu, &ta, &tdc, None, Gemm { trans_a: true, ..Gemm::default() }))?;
        compare("dA split", &ok(gpu.download(&da))?, &cpu::gemm(&dc, &b, None, 1, m, k, n, false, true, false, false, 1.0, 0.0), tol(n))?;
        compare("dB split", &ok(gpu.download(&db))?, &cpu::gemm(&a, &dc, None, 1, k, n, m, true, false, false, false, 1.0, 0.0), tol(m))
    });

    // The oracle's dA and dB are the gradients of Σ dC · (A·B).
    let (m, k, n) = (4, 6, 5);
    let mut r = rng(7300);
    let (a, b, dc) = (random_vec(&mut r, m * k), random_vec(&mut r, k * n), random_vec(&mut r, m * n));
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (a64, b64) = (f64s(&a), f64s(&b));
    let loss = |a: &[f64], b: &[f64]| {
        let mut s = 0.0;
        for i in 0..m {
            for j in 0..n {
                s += dc[i * n + j] as f64 * (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>();
            }
        }
        s
    };
    let da = cpu::gemm(&dc, &b, None, 1, m, k, n, false, true, false, false, 1.0, 0.0);
    let db = cpu::gemm(&a, &dc, None, 1, k, n, m, true, false, false, false, 1.0, 0.0);
    check_gradient("dA", |x| loss(x, &b64), &a64, &da, 64, 1e-5, 1e-6).unwrap();
    check_gradient("dB", |x| loss(&a64, x), &b64, &db, 64, 1e-5, 1e-6).unwrap();
}

#[test]
fn matmul_backward_rejects_mismatched_shapes() {
    for_each_gpu(|gpu| {
        // dC [3, 4] against B [5, 6]: dC·Bᵀ needs dC's columns to match B's 6.
        let dc = ok(gpu.upload(&[0.0; 12], &[3, 4]))?;
        let b = ok(gpu.upload(&[0.0; 30], &[5, 6]))?;
        let err = gemm(gpu, &dc, &b, None, Gemm { trans_b: true, ..Gemm::default() }).err().ok_or("gemm accepted dC [3, 4] with Bᵀ [6, 5]")?.to_string();
        if !(err.contains("matmul") && err.contains("inner dimensions")) {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}
