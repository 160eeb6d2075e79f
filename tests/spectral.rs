//! The spectral kernels and the subspace-iteration SVD on every adapter:
//! Cholesky QR pieces against the f64 reference, orthonormalisation of ill-conditioned and
//! rank-deficient blocks, the complement-projector filter and its properties, and top-k
//! singular triplets against faer's SVD on matrices with known spectra.

// Negated comparisons on purpose: a NaN must fail them. Index loops compare two lists.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

mod common;
use common::*;
use revive::cpu::ortho as reference;
use revive::ops::matmul::{gemm, Gemm};
use revive::ops::ortho::{chol_inverse_small, cholesky, cholesky_shifted, dead_tolerance, orthonormalize, span_basis, tri_inverse};
use revive::ops::project::complement;
use revive::linalg::svd::{rank_for_energy, top_eigen, top_energy, top_k, Ritz, SvdOptions};
use revive::ops::jacobi::{jacobi_svd, jacobi_svd_with, jacobi_tolerance, MAX_SWEEPS};
use revive::testing::{matrix_with_spectrum, random_orthonormal};

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// max |QᵀQ − I| for an m×n row-major Q.
fn orthogonality_error(q: &[f32], m: usize, n: usize) -> f64 {
    let mut worst = 0f64;
    for a in 0..n {
        for b in 0..n {
            let d: f64 = (0..m).map(|i| q[i * n + a] as f64 * q[i * n + b] as f64).sum();
            worst = worst.max((d - if a == b { 1.0 } else { 0.0 }).abs());
        }
    }
    worst
}

fn gram(y: &[f32], m: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0; n * n];
    for a in 0..n {
        for b in 0..n {
            g[a * n + b] = (0..m).map(|i| y[i * n + a] as f64 * y[i * n + b] as f64).sum();
        }
    }
    g
}

/// A random m×n block, with (when `dependent`) columns that are combinations of earlier ones:
/// 5 and 9 in the first tile, 40 and 66 (n > 66) in later tiles, so a dead column's row in
/// earlier panels is cleared too. Returns the block and the columns expected dead.
fn block_with_dependencies(m: usize, n: usize, dependent: bool) -> (Vec<f32>, Vec<usize>) {
    let mut y = random_vec(&mut rng(n as u64), m * n);
    if !dependent {
        return (y, vec![]);
    }
    let mut dead = vec![5, 9];
    for i in 0..m {
        y[i * n + 5] = y[i * n + 2];
        y[i * n + 9] = 0.5 * y[i * n + 2] + y[i * n + 3];
        if n > 66 {
            y[i * n + 40] = y[i * n + 2] - y[i * n + 35];
            y[i * n + 66] = y[i * n + 33];
        }
    }
    if n > 66 {
        dead.extend([40, 66]);
    }
    (y, dead)
}

/// Factorises YᵀY and inverts the factor on `gpu`, against the f64 reference.
fn check_factorisation(gpu: &revive::gpu::Gpu, m: usize, n: usize, dependent: bool) -> Result<(), String> {
    let (y, expect_dead) = block_with_dependencies(m, n, dependent);
    let g = gram(&y, m, n);
    let tol = dead_tolerance(n);
    let (l, aux) = ok(cholesky(gpu, &ok(gpu.upload(&f32s(&g), &[n, n]))?, tol))?;
    let (want_l, want_dead) = reference::cholesky(&g, n, tol as f64);
    let flags = ok(gpu.download(&aux))?;
    let dead: Vec<bool> = flags[n..].iter().map(|&f| f == 1.0).collect();
    if dead != want_dead {
        return Err(format!("{m}×{n}: dead columns {:?}, expected {:?}", idx(&dead), idx(&want_dead)));
    }
    if dependent && idx(&dead) != expect_dead {
        return Err(format!("dependent columns {expect_dead:?} not found: {:?}", idx(&dead)));
    }
    let got_l = ok(gpu.download(&l))?;
    compare(&format!("cholesky {n}"), &got_l, &want_l, Tolerance::new(2e-5, 1e-4, 5e-5))?;
    let inv = ok(gpu.download(&ok(tri_inverse(gpu, &l, &aux))?))?;
    let want_inv = reference::tri_inverse(&f64s(&got_l), n, &dead);
    let scale = want_inv.iter().fold(0f64, |a, b| a.max(b.abs()));
    compare(&format!("tri_inverse {n}"), &inv, &want_inv, Tolerance::new(1e-5 * scale, 1e-4, 1e-4))
}

#[test]
fn cholesky_and_triangular_inverse_match_the_reference() {
    // 1, primes, one tile (32) and one more column, many tiles ending in a partial one, wider
    // than one workgroup's 256 threads, and 577 columns: the one-workgroup kernels these
    // replaced gave wrong factors from 384–512 columns on llvmpipe. Dependent columns within
    // the first tile and in later ones.
    for_each_gpu(|gpu| {
        for (m, n, dependent) in [(1, 1, false), (9, 7, false), (40, 33, false), (80, 64, false), (301, 257, false), (50, 13, true), (120, 101, true), (600, 577, false)] {
            check_factorisation(gpu, m, n, dependent)?;
        }
        Ok(())
    });
}

/// The one-dispatch factorisation and inverse of narrow Gram matrices (n ≤ 48: a top-32 SVD's
/// block) against the f64 reference of the shifted matrix: 1, primes, one tile (32) and one
/// more column, the widest (48); dependent columns with and without a shift; and one dispatch.
#[test]
fn the_small_factorisation_and_inverse_match_the_reference() {
    for_each_fresh_gpu(true, |gpu| {
        for (m, n, dependent, shift) in [(1usize, 1usize, false, 0.0f64), (5, 2, false, 1e-3), (9, 7, false, 0.0), (50, 13, true, 0.0), (50, 13, true, 1e-6), (40, 31, false, 7.5e-4), (40, 32, false, 0.0), (60, 33, false, 2e-3), (80, 47, true, 0.0), (100, 48, false, 4e-4)] {
            let (y, expect_dead) = block_with_dependencies(m, n, dependent);
            let mut g = gram(&y, m, n);
            let tol = dead_tolerance(n);
            let before = gpu.runtime_stats();
            let (inv, aux) = ok(chol_inverse_small(gpu, &ok(gpu.upload(&f32s(&g), &[n, n]))?, tol, shift as f32))?;
            let dispatches = (gpu.runtime_stats() - before).dispatches;
            let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
            (0..n).for_each(|i| g[i * n + i] += shift * trace);
            let (want_l, want_dead) = reference::cholesky(&g, n, tol as f64);
            let flags = ok(gpu.download(&aux))?;
            let dead: Vec<bool> = flags[n..].iter().map(|&f| f == 1.0).collect();
            let case = format!("{m}×{n} shift {shift}");
            if dispatches != 1 || dead != want_dead || (dependent && shift == 0.0 && idx(&dead) != expect_dead) {
                return Err(format!("{case}: {dispatches} dispatches; dead columns {:?}, expected {:?}", idx(&dead), idx(&want_dead)));
            }
            compare(&format!("{case}: shifted diagonal"), &flags[..n], &(0..n).map(|i| g[i * n + i]).collect::<Vec<_>>(), Tolerance::new(1e-6, 1e-5, 1e-5))?;
            let want_inv = reference::tri_inverse(&want_l, n, &dead);
            let scale = want_inv.iter().fold(0f64, |a, b| a.max(b.abs()));
            compare(&format!("{case}: L⁻¹"), &ok(gpu.download(&inv))?, &want_inv, Tolerance::new(1e-4 * scale, 1e-3, 1e-3))?;
        }
        let wide = ok(gpu.upload(&vec![1.0; 49 * 49], &[49, 49]))?;
        chol_inverse_small(gpu, &wide, 1e-5, 0.0).err().ok_or("a 49-column matrix was taken")?;
        Ok(())
    });
}

#[test]
fn the_shifted_cholesky_matches_the_reference_of_the_shifted_matrix() {
    // The first pass of orthonormalize factorises YᵀY + s·trace·I; the kernel adds the shift
    // itself (a reduction over the diagonal in one workgroup). Sizes below, at and above the
    // workgroup's 256 threads; a rank-deficient block, where the shift is what keeps every
    // column alive.
    for_each_gpu(|gpu| {
        for (m, n, shift) in [(1usize, 1usize, 1e-3f64), (40, 37, 7.5e-4), (300, 256, 1e-4), (320, 300, 2e-3), (30, 40, 1e-3)] {
            let y = random_vec(&mut rng(3 * n as u64), m * n);
            let mut g = gram(&y, m, n);
            let tol = dead_tolerance(n);
            let (l, aux) = ok(cholesky_shifted(gpu, &ok(gpu.upload(&f32s(&g), &[n, n]))?, tol, shift as f32))?;
            let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
            (0..n).for_each(|i| g[i * n + i] += shift * trace);
            let (want_l, want_dead) = reference::cholesky(&g, n, tol as f64);
            let flags = ok(gpu.download(&aux))?;
            let dead: Vec<bool> = flags[n..].iter().map(|&f| f == 1.0).collect();
            if dead != want_dead {
                return Err(format!("{m}×{n} shift {shift}: dead columns {:?}, expected {:?}", idx(&dead), idx(&want_dead)));
            }
            if dead.iter().any(|&d| d) {
                return Err(format!("{m}×{n} shift {shift}: the shifted matrix lost columns {:?}", idx(&dead)));
            }
            compare(&format!("shifted cholesky {m}×{n}"), &ok(gpu.download(&l))?, &want_l, Tolerance::new(2e-5, 1e-4, 5e-5))?;
        }
        Ok(())
    });
}

fn idx(flags: &[bool]) -> Vec<usize> {
    flags.iter().enumerate().filter(|(_, &d)| d).map(|(i, _)| i).collect()
}

#[test]
fn orthonormalize_keeps_the_span_and_full_rank() {
    for_each_gpu(|gpu| {
        // Wide blocks: 1000×576 and a graded 600×400 (the one-workgroup kernels the blocked ones
        // replaced went wrong from 384 columns on llvmpipe).
        for (m, n, case) in [(1, 1, "plain"), (7, 7, "plain"), (100, 37, "plain"), (1000, 129, "plain"), (300, 40, "graded"), (300, 40, "deficient"), (64, 20, "zero"), (1000, 576, "plain"), (600, 400, "graded")] {
            let mut r = rng(m as u64 * 31 + n as u64);
            let mut y = random_vec(&mut r, m * n);
            match case {
                // Columns scaled over 6 decades and leaning towards the first (cosines near 0.9):
                // what the rotated blocks of the subspace iteration look like at worst.
                "graded" => {
                    for i in 0..m {
                        for j in 1..n {
                            y[i * n + j] = (y[i * n] + 0.5 * y[i * n + j]) * 10f32.powf(-(j as f32) * 6.0 / n as f32);
                        }
                    }
                }
                // Rank 10: the rest are combinations of the first 10.
                "deficient" => {
                    for i in 0..m {
                        for j in 10..n {
                            y[i * n + j] = y[i * n + j % 10] - 0.5 * y[i * n + (j + 3) % 10];
                        }
                    }
                }
                "zero" => {
                    for i in 0..m {
                        y[i * n + 3] = 0.0;
                        y[i * n + 11] = 0.0;
                    }
                }
                _ => {}
            }
            // The cheap basis first: the same span and full rank, orthonormal or not.
            let b = ok(gpu.download(&ok(span_basis(gpu, &ok(gpu.upload(&y, &[m, n]))?, 7))?))?;
            if b.iter().any(|v| !v.is_finite()) {
                return Err(format!("{case} {m}×{n}: non-finite span basis"));
            }
            let (bq, kept) = gram_schmidt(&f64s(&b), m, n);
            if !(kept >= 1e-4) {
                return Err(format!("{case} {m}×{n}: the span basis is rank-deficient (a column keeps {kept:e} of its norm against the others)"));
            }
            let yd = f64s(&y);
            let res = reference::complement(&yd, m, n, &bq, n, &[], 0);
            let rel = frob(&res) / frob(&yd);
            if !(rel <= 1e-4) {
                return Err(format!("{case} {m}×{n}: Y leaves the span basis by {rel:e}"));
            }
            let q = ok(gpu.download(&ok(orthonormalize(gpu, &ok(gpu.upload(&y, &[m, n]))?, 7))?))?;
            if q.iter().any(|v| !v.is_finite()) {
                return Err(format!("{case} {m}×{n}: non-finite output"));
            }
            let e = orthogonality_error(&q, m, n);
            if e > 2e-6 * (n as f64).sqrt().max(1.0) {
                return Err(format!("{case} {m}×{n}: |QᵀQ − I| = {e:e}"));
            }
            // span(Y) ⊆ span(Q): Y − Q QᵀY = 0 (relative to ‖Y‖).
            let qd = f64s(&q);
            let yd = f64s(&y);
            let res = reference::complement(&yd, m, n, &qd, n, &[], 0);
            let rel = res.iter().map(|x| x * x).sum::<f64>().sqrt() / yd.iter().map(|x| x * x).sum::<f64>().sqrt();
            if rel > 1e-4 {
                return Err(format!("{case} {m}×{n}: Y leaves span(Q) by {rel:e}"));
            }
        }
        Ok(())
    });
}

/// Orthonormal columns of the same span by Gram–Schmidt twice in f64 (m×n, row-major), and the
/// smallest share of its norm a column kept after removing the earlier ones (0: dependent).
fn gram_schmidt(a: &[f64], m: usize, n: usize) -> (Vec<f64>, f64) {
    let mut q = a.to_vec();
    let mut kept = f64::INFINITY;
    for j in 0..n {
        let norm0 = (0..m).map(|i| q[i * n + j].powi(2)).sum::<f64>().sqrt();
        for _ in 0..2 {
            for p in 0..j {
                let d: f64 = (0..m).map(|i| q[i * n + p] * q[i * n + j]).sum();
                (0..m).for_each(|i| q[i * n + j] -= d * q[i * n + p]);
            }
        }
        let norm = (0..m).map(|i| q[i * n + j].powi(2)).sum::<f64>().sqrt();
        // A zero column keeps nothing (0/0 would be NaN, which `min` skips).
        kept = kept.min(if norm0 > 0.0 { norm / norm0 } else { 0.0 });
        (0..m).for_each(|i| q[i * n + j] /= norm);
    }
    (q, kept)
}

fn frob(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn the_filter_matches_the_reference_and_is_a_projector() {
    for_each_gpu(|gpu| {
        for (m, n, kl, kr) in [(1, 1, 0, 0), (1, 5, 0, 2), (7, 13, 3, 5), (97, 33, 16, 17), (300, 257, 40, 0), (64, 300, 0, 64), (576, 200, 129, 31)] {
            let mut r = rng((m * n + kl) as u64);
            let x = random_vec(&mut r, m * n);
            let u = random_orthonormal(&mut r, m, kl);
            let v = random_orthonormal(&mut r, n, kr);
            let tu = ok(gpu.upload(&f32s(&u), &[m, kl]))?;
            let tv = ok(gpu.upload(&f32s(&v), &[n, kr]))?;
            let (bu, bv) = ((kl > 0).then_some(&tu), (kr > 0).then_some(&tv));
            let tx = ok(gpu.upload(&x, &[m, n]))?;
            let out_t = ok(complement(gpu, &tx, bu, bv))?;
            let out = ok(gpu.download(&out_t))?;
            let want = reference::complement(&f64s(&x), m, n, &f32s_to_f64(&u), kl, &f32s_to_f64(&v), kr);
            compare(&format!("complement {m}×{n} ranks {kl},{kr}"), &out, &want, Tolerance::new(2e-5, 1e-4, 1e-5))?;
            // ‖Uᵀ out‖ and ‖out V‖ vanish to 1e-5 ‖X‖.
            let xn = frob(&f64s(&x));
            let od = f64s(&out);
            let left_leak = frob(&od.iter().zip(&reference::complement(&od, m, n, &f32s_to_f64(&u), kl, &[], 0)).map(|(a, b)| a - b).collect::<Vec<_>>());
            let right_leak = frob(&od.iter().zip(&reference::complement(&od, m, n, &[], 0, &f32s_to_f64(&v), kr)).map(|(a, b)| a - b).collect::<Vec<_>>());
            if !(left_leak <= 1e-5 * xn && right_leak <= 1e-5 * xn) {
                return Err(format!("{m}×{n}: leak into the protected subspaces {left_leak:e}, {right_leak:e} (‖X‖ = {xn:e})"));
            }
            // Idempotent.
            let twice = ok(gpu.download(&ok(complement(gpu, &out_t, bu, bv))?))?;
            compare("complement twice", &twice, &od, Tolerance::new(1e-6, 1e-5, 1e-5))?;
            // An update already outside both subspaces passes unchanged.
            let outside = reference::complement(&f64s(&x), m, n, &f32s_to_f64(&u), kl, &f32s_to_f64(&v), kr);
            let same = ok(gpu.download(&ok(complement(gpu, &ok(gpu.upload(&f32s(&outside), &[m, n]))?, bu, bv))?))?;
            compare("outside passes", &same, &outside, Tolerance::new(1e-6, 1e-5, 1e-5))?;
        }
        Ok(())
    });
}

/// The bases as the GPU sees them (rounded to f32), for the f64 reference.
fn f32s_to_f64(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

#[derive(Clone)]
struct Case {
    name: &'static str,
    m: usize,
    n: usize,
    sigma: Vec<f64>,
    k: usize,
}

fn cases() -> Vec<Case> {
    let geometric = |r: usize, lo: f64| (0..r).map(|i| lo.powf(i as f64 / (r - 1).max(1) as f64)).collect::<Vec<_>>();
    vec![
        Case { name: "separated", m: 120, n: 90, sigma: geometric(90, 1e-3), k: 10 },
        Case { name: "one", m: 1, n: 17, sigma: vec![3.0], k: 1 },
        Case { name: "clustered", m: 200, n: 150, sigma: (0..150).map(|i| if i < 6 { 1.0 - 1e-3 * i as f64 } else if i < 12 { 0.5 - 1e-3 * i as f64 } else { 0.2 * 0.97f64.powi(i) }).collect(), k: 12 },
        Case { name: "repeated", m: 130, n: 130, sigma: (0..130).map(|i| if i < 5 { 2.0 } else if i < 9 { 1.0 } else { 0.3 / (1.0 + i as f64) }).collect(), k: 9 },
        Case { name: "rank-deficient", m: 160, n: 100, sigma: geometric(7, 0.05), k: 7 },
        Case { name: "tall", m: 577, n: 31, sigma: geometric(31, 0.01), k: 31 },
        Case { name: "wide", m: 23, n: 611, sigma: geometric(23, 0.02), k: 20 },
        Case { name: "flat", m: 301, n: 257, sigma: (0..257).map(|i| 1.0 - 0.6 * i as f64 / 257.0).collect(), k: 61 },
        // Top directions over three decades, then a gap: the last ones sit far below the
        // orthonormalisation's shift, so a basis that let them fade between checks fails here.
        Case { name: "steep", m: 220, n: 160, sigma: (0..160).map(|i| if i < 24 { 10f64.powf(-3.0 * i as f64 / 23.0) } else { 2e-4 * 0.9f64.powi(i - 24) }).collect(), k: 24 },
    ]
}

#[test]
fn top_k_matches_the_cpu_svd_on_known_spectra() {
    // The Rayleigh–Ritz step's small SVD both ways: on the GPU (Jacobi) and on the host (faer).
    for_each_gpu(|gpu| {
        for (c, ritz) in cases().into_iter().flat_map(|c| [Ritz::Gpu, Ritz::Host].map(|r| (c.clone(), r))) {
            let mut r = rng(c.m as u64 * 7 + c.n as u64);
            let w = matrix_with_spectrum(&mut r, c.m, c.n, &c.sigma);
            let (ru, rs, rv) = reference::svd(&w, c.m, c.n);
            let got = ok(top_k(gpu, &ok(gpu.upload(&w, &[c.m, c.n]))?, c.k, &SvdOptions { ritz, ..SvdOptions::default() }))?;
            let name = format!("{} ({ritz:?})", c.name);
            let want_host = if ritz == Ritz::Host { got.checks } else { 0 };
            if got.host_checks != want_host || (ritz == Ritz::Gpu) != (got.sweeps > 0) {
                return Err(format!("{name}: {} of {} checks on the host, {} sweeps", got.host_checks, got.checks, got.sweeps));
            }
            let c = Case { name: Box::leak(name.into_boxed_str()), ..c };
            for i in 0..c.k {
                let rel = (got.sigma[i] - rs[i]).abs() / rs[i];
                if !(rel <= 1e-4) {
                    return Err(format!("{}: σ_{i} = {} vs {} (relative {rel:e})", c.name, got.sigma[i], rs[i]));
                }
            }
            let rdim = c.m.min(c.n);
            let take = |v: &[f64], rows: usize| -> Vec<f64> { (0..rows).flat_map(|i| v[i * rdim..i * rdim + c.k].to_vec()).collect() };
            let (u, v) = (f64s(&ok(gpu.download(&got.u))?), f64s(&ok(gpu.download(&got.v))?));
            for (side, mine, theirs, rows) in [("left", &u, take(&ru, c.m), c.m), ("right", &v, take(&rv, c.n), c.n)] {
                let sines = reference::principal_sines(&theirs, c.k, mine, c.k, rows);
                if !(sines[0] <= 2e-3) {
                    return Err(format!("{}: the {side} top-{} subspace is {:.2e} (sine of the largest principal angle) from the reference", c.name, c.k, sines[0]));
                }
            }
            if orthogonality_error(&ok(gpu.download(&got.u))?, c.m, c.k) > 1e-5 {
                return Err(format!("{}: U is not orthonormal", c.name));
            }
        }
        Ok(())
    });
}

#[test]
fn every_rank_up_to_the_full_one_and_the_energy_rule() {
    for_each_gpu(|gpu| {
        let (m, n) = (70, 45);
        let sigma: Vec<f64> = (0..45).map(|i| 1.0 / (1.0 + 0.2 * i as f64)).collect();
        let w = matrix_with_spectrum(&mut rng(3), m, n, &sigma);
        let tw = ok(gpu.upload(&w, &[m, n]))?;
        let (_, rs, _) = reference::svd(&w, m, n);
        let full = ok(top_k(gpu, &tw, n, &SvdOptions::default()))?;
        for i in 0..n {
            if (full.sigma[i] - rs[i]).abs() > 1e-4 * rs[i] {
                return Err(format!("full rank: σ_{i} {} vs {}", full.sigma[i], rs[i]));
            }
        }
        let total: f64 = rs.iter().map(|s| s * s).sum();
        for tau in [0.1, 0.5, 0.9, 1.0] {
            let want = rank_for_energy(&rs, total * (1.0 - 1e-12), tau).unwrap();
            let (got, t) = ok(top_energy(gpu, &tw, tau, &SvdOptions::default()))?;
            if (t - total).abs() > 1e-5 * total {
                return Err(format!("‖W‖_F² {t} vs {total}"));
            }
            // Near a boundary the f32 total may tip the count by one.
            if got.sigma.len().abs_diff(want) > 1 || got.u.shape() != [m, got.sigma.len()] {
                return Err(format!("τ = {tau}: k = {} ({:?}), expected {want}", got.sigma.len(), got.u.shape()));
            }
        }
        Ok(())
    });
}

#[test]
fn top_eigen_of_a_covariance() {
    for_each_gpu(|gpu| {
        // C = AᵀA / rows: PSD, like C0.
        let (rows, n, k) = (400, 96, 8);
        let a = matrix_with_spectrum(&mut rng(11), rows, n, &(0..n).map(|i| 3.0 * 0.93f64.powi(i as i32)).collect::<Vec<_>>());
        let ta = ok(gpu.upload(&a, &[rows, n]))?;
        let c = ok(gemm(gpu, &ta, &ta, None, Gemm { trans_a: true, alpha: 1.0 / rows as f32, ..Gemm::default() }))?;
        let cv = ok(gpu.download(&c))?;
        let (ru, rs, _) = reference::svd(&cv, n, n);
        let (vecs, vals) = ok(top_eigen(gpu, &c, k, &SvdOptions::default()))?;
        for i in 0..k {
            if (vals[i] - rs[i]).abs() > 1e-4 * rs[i] {
                return Err(format!("λ_{i} {} vs {}", vals[i], rs[i]));
            }
        }
        let theirs: Vec<f64> = (0..n).flat_map(|i| ru[i * n..i * n + k].to_vec()).collect();
        let s = reference::principal_sines(&theirs, k, &f64s(&ok(gpu.download(&vecs))?), k, n);
        if s[0] > 2e-3 {
            return Err(format!("eigenvectors {:.2e} from the reference", s[0]));
        }
        Ok(())
    });
}

#[test]
fn non_convergence_and_bad_input_are_errors() {
    for_each_gpu(|gpu| {
        let sigma: Vec<f64> = (0..60).map(|i| 1.0 - 0.001 * i as f64).collect();
        let w = ok(gpu.upload(&matrix_with_spectrum(&mut rng(5), 80, 60, &sigma), &[80, 60]))?;
        let opts = SvdOptions { max_iters: 2, oversample: Some(2), ..SvdOptions::default() };
        match top_k(gpu, &w, 10, &opts) {
            Err(e) if e.to_string().contains("did not converge") => {}
            other => return Err(format!("a 2-iteration cap on a flat spectrum: {other:?}")),
        }
        let mut bad = vec![0.5f32; 12];
        bad[7] = f32::NAN;
        match top_k(gpu, &ok(gpu.upload(&bad, &[3, 4]))?, 1, &SvdOptions::default()) {
            Err(e) if e.to_string().contains("non-finite") => {}
            other => return Err(format!("NaN input: {other:?}")),
        }
        for k in [0, 4] {
            if top_k(gpu, &ok(gpu.upload(&[1.0; 12], &[3, 4]))?, k, &SvdOptions::default()).is_ok() {
                return Err(format!("rank {k} of a 3×4 matrix was accepted"));
            }
        }
        if top_k(gpu, &ok(gpu.upload(&[0.0; 12], &[3, 4]))?, 1, &SvdOptions::default()).is_ok() {
            return Err("a zero matrix was given a dominant subspace".into());
        }
        Ok(())
    });
}

#[test]
fn the_guard_is_cached_by_weight_and_rule_and_filters_updates() {
    use revive::edit::guard::{RankRule, SpectralGuard};
    use revive::store::Outcome;
    for_each_gpu(|gpu| {
        let dir = std::env::temp_dir().join(format!("revive-guard-{}-{}", std::process::id(), gpu.label().len()));
        let _ = std::fs::remove_dir_all(&dir);
        let (m, n) = (48, 70);
        let sigma: Vec<f64> = (0..48).map(|i| 2.0 * 0.9f64.powi(i)).collect();
        let w = ok(gpu.upload(&matrix_with_spectrum(&mut rng(21), m, n, &sigma), &[m, n]))?;
        let opts = SvdOptions::default();
        let rule = RankRule::Energy(0.5);
        let (g, o) = ok(SpectralGuard::cached(gpu, &w, "layers.0.w_down", rule, &opts, &dir))?;
        let total: f64 = sigma.iter().map(|s| s * s).sum();
        let want_k = rank_for_energy(&sigma, total, 0.5).unwrap();
        if o != Outcome::Computed || g.info.k.abs_diff(want_k) > 1 || g.info.energy_fraction < 0.5 {
            return Err(format!("first lookup: {o:?}, k {} (expected {want_k}), energy {}", g.info.k, g.info.energy_fraction));
        }
        let (again, o) = ok(SpectralGuard::cached(gpu, &w, "layers.0.w_down", rule, &opts, &dir))?;
        if o != Outcome::Reused || ok(gpu.download(&again.u))? != ok(gpu.download(&g.u))? || again.info.sigma != g.info.sigma {
            return Err(format!("second lookup: {o:?} or a different basis"));
        }
        // Another rule or other weights: another file.
        let (_, o) = ok(SpectralGuard::cached(gpu, &w, "layers.0.w_down", RankRule::Rank(3), &opts, &dir))?;
        if o != Outcome::Computed {
            return Err(format!("rank 3 after τ 0.5: {o:?}"));
        }
        // A damaged file is rebuilt, naming the file.
        let file = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("tau0.5")).unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        *bytes.last_mut().unwrap() ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        match ok(SpectralGuard::cached(gpu, &w, "layers.0.w_down", rule, &opts, &dir))?.1 {
            Outcome::Rebuilt(why) if why.contains(&file.display().to_string()) && why.contains("sha256") => {}
            o => return Err(format!("a flipped byte: {o:?}")),
        }
        // The filter: nothing left in the protected subspaces, most of a random update kept.
        let dw = ok(gpu.upload(&random_vec(&mut rng(4), m * n), &[m, n]))?;
        let (safe, report) = ok(g.filter(gpu, &dw))?;
        if !(report.after.left <= 1e-5 && report.after.right <= 1e-5 && report.before.left > 0.1 && report.kept > 0.3 && report.kept < 1.0) {
            return Err(format!("filter report {report:?}"));
        }
        let leak = ok(g.leak(gpu, &safe))?;
        if leak.left > 1e-5 || leak.right > 1e-5 {
            return Err(format!("leak after filtering {leak:?}"));
        }
        if g.filter(gpu, &ok(gpu.upload(&[0.0; 6], &[2, 3]))?).is_ok() {
            return Err("a ΔW of the wrong shape was filtered".into());
        }
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    });
}

#[test]
fn diagnostics_see_an_edit_move_the_spectrum() {
    use revive::ops::elementwise::axpy;
    use revive::eval::spectrum::diagnose;
    use revive::edit::guard::{RankRule, SpectralGuard};
    for_each_gpu(|gpu| {
        let (m, n) = (40, 64);
        let sigma: Vec<f64> = (0..40).map(|i| 1.0 / (1.0 + i as f64)).collect();
        let w0v = matrix_with_spectrum(&mut rng(8), m, n, &sigma);
        let w0 = ok(gpu.upload(&w0v, &[m, n]))?;
        let g = ok(SpectralGuard::compute(gpu, &w0, "w", RankRule::Rank(4), &SvdOptions::default()))?;
        let same = ok(diagnose(gpu, "w", &w0, &w0, &g.basis(), &SvdOptions::default()))?;
        if (same.left_similarity - 1.0).abs() > 1e-4 || same.drift != 0.0 {
            return Err(format!("unchanged weight: similarity {} drift {}", same.left_similarity, same.drift));
        }
        // A rank-one update inside the protected subspace moves it; filtered, it does not.
        let (u, v) = (ok(gpu.download(&g.u))?, ok(gpu.download(&g.v))?);
        let bump: Vec<f32> = (0..m * n).map(|i| 3.0 * (u[(i / n) * 4 + 3] * v[(i % n) * 4 + 1] + 0.5 * u[(i / n) * 4] * v[(i % n) * 4 + 2])).collect();
        let dw = ok(gpu.upload(&bump, &[m, n]))?;
        let w = ok(gpu.upload(&w0v, &[m, n]))?;
        ok(axpy(gpu, 1.0, &dw, &w))?;
        let moved = ok(diagnose(gpu, "w", &w, &w0, &g.basis(), &SvdOptions::default()))?;
        let (safe, _) = ok(g.filter(gpu, &dw))?;
        let w_safe = ok(gpu.upload(&w0v, &[m, n]))?;
        ok(axpy(gpu, 1.0, &safe, &w_safe))?;
        let kept = ok(diagnose(gpu, "w", &w_safe, &w0, &g.basis(), &SvdOptions::default()))?;
        if !(moved.left_similarity < 0.95 && (kept.left_similarity - 1.0).abs() < 1e-4 && (moved.drift - 3.0 * 1.25f64.sqrt()).abs() < 1e-3) {
            return Err(format!("similarity edited {} filtered {}; drift {}", moved.left_similarity, kept.left_similarity, moved.drift));
        }
        // The in-subspace update lies wholly in the protected subspaces; a filtered random
        // update not at all (to the rounding of W0 + ΔW − W0 in f32).
        let (safe, _) = ok(g.filter(gpu, &ok(gpu.upload(&random_vec(&mut rng(9), m * n), &[m, n]))?))?;
        let w_rand = ok(gpu.upload(&w0v, &[m, n]))?;
        ok(axpy(gpu, 1.0, &safe, &w_rand))?;
        let outside = ok(diagnose(gpu, "w", &w_rand, &w0, &g.basis(), &SvdOptions::default()))?;
        if !((moved.leak.left - 1.0).abs() < 1e-4 && (moved.leak.right - 1.0).abs() < 1e-4 && outside.leak.left < 1e-5 && outside.leak.right < 1e-5 && same.leak.left == 0.0) {
            return Err(format!("leak: edited {:?}, filtered random {:?}, unchanged {:?}", moved.leak, outside.leak, same.leak));
        }
        Ok(())
    });
}

#[test]
fn top_k_is_the_same_when_every_kernel_is_split() {
    use revive::gpu::SplitLimits;
    for_each_gpu(|gpu| {
        // Three workgroups per dimension: the matmuls and the 1-D ortho kernels run in pieces.
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        let (m, n, k) = (203, 97, 7);
        let sigma: Vec<f64> = (0..97).map(|i| 0.9f64.powi(i)).collect();
        let w = matrix_with_spectrum(&mut rng(17), m, n, &sigma);
        let (_, rs, _) = reference::svd(&w, m, n);
        let got = ok(top_k(&small, &ok(small.upload(&w, &[m, n]))?, k, &SvdOptions::default()))?;
        for i in 0..k {
            if (got.sigma[i] - rs[i]).abs() > 1e-4 * rs[i] {
                return Err(format!("split: σ_{i} {} vs {}", got.sigma[i], rs[i]));
            }
        }
        // The blocked factorisation's panels, trailing updates and inverse rows in pieces of 3
        // workgroups per dimension.
        check_factorisation(&small, 160, 150, true)?;
        // Dead columns in a block past 3 × 256 elements are refilled piece by piece.
        let mut y = random_vec(&mut rng(2), 300 * 12);
        for i in 0..300 {
            y[i * 12 + 4] = y[i * 12 + 1];
        }
        let q = ok(small.download(&ok(orthonormalize(&small, &ok(small.upload(&y, &[300, 12]))?, 3))?))?;
        if orthogonality_error(&q, 300, 12) > 1e-5 {
            return Err("split: the refilled block is not orthonormal".into());
        }
        Ok(())
    });
}

#[test]
fn a_block_as_wide_as_the_matrix_converges() {
    // `revive bench svd --case 576x1536:512` (and :400) failed on llvmpipe with "the projected
    // 576×576 matrix has a non-finite entry": the block (k + oversampling, capped at 576) was
    // square, and Cholesky QR of a square f32 block lost directions. The benchmark's matrix,
    // checked against the f64 SVD.
    let (m, n) = (576, 1536);
    let w = revive::bench::svd::matrix(m, n, (m * 31 + n) as u64);
    let (ru, rs, _) = reference::svd(&w, m, n);
    for_each_gpu(|gpu| {
        let tw = ok(gpu.upload(&w, &[m, n]))?;
        // The square block's Rayleigh–Ritz step is the whole SVD: also with it on the GPU.
        for (k, ritz) in [(400, Ritz::Auto), (512, Ritz::Auto), (512, Ritz::Gpu)] {
            let got = ok(top_k(gpu, &tw, k, &SvdOptions { ritz, ..SvdOptions::default() }))?;
            if ritz == Ritz::Gpu && (got.host_checks > 0 || got.sweeps == 0) {
                return Err(format!("k = {k}: {} of {} checks fell back to the host", got.host_checks, got.checks));
            }
            let worst = (0..k).map(|i| (got.sigma[i] - rs[i]).abs() / rs[i]).fold(0.0, f64::max);
            if !(worst <= 1e-4) {
                return Err(format!("k = {k}: σ off by {worst:e} (relative)"));
            }
            let u = ok(gpu.download(&got.u))?;
            if orthogonality_error(&u, m, k) > 1e-5 || orthogonality_error(&ok(gpu.download(&got.v))?, n, k) > 1e-5 {
                return Err(format!("k = {k}: U or V is not orthonormal"));
            }
            // σ_512 and σ_513 are close, so the subspace is where the small SVD's precision shows.
            let theirs: Vec<f64> = (0..m).flat_map(|i| ru[i * m..i * m + k].to_vec()).collect();
            let sine = reference::principal_sines(&theirs, k, &f64s(&u), k, m)[0];
            if !(sine <= 2e-4) {
                return Err(format!("k = {k} ({ritz:?}): the top-{k} left subspace is {sine:.1e} from the reference"));
            }
        }
        Ok(())
    });
}

/// The weight both processes of the cache race compute a basis of.
fn race_weight(gpu: &revive::gpu::Gpu) -> revive::Result<revive::Tensor> {
    let sigma: Vec<f64> = (0..160).map(|i| 3.0 * 0.97f64.powi(i)).collect();
    gpu.upload(&matrix_with_spectrum(&mut rng(31), 160, 230, &sigma), &[160, 230])
}

/// Not a test of its own: one of the two processes of the cache race. It waits for the
/// parent's signal so that both compute at once, then prints its outcome and basis checksum.
#[test]
fn child_computes_a_cached_basis() {
    use revive::edit::guard::{RankRule, SpectralGuard};
    let (Ok(dir), Ok(backend)) = (std::env::var("REVIVE_TEST_RACE_DIR"), std::env::var("REVIVE_TEST_CHILD_BACKEND")) else { return };
    let dir = std::path::PathBuf::from(dir);
    let gpu = gpus().iter().find(|g| format!("{:?}", g.info().backend) == backend).expect("the parent's adapter");
    let w = race_weight(gpu).unwrap();
    std::fs::write(dir.join(format!("ready-{}", std::process::id())), b"").unwrap();
    while !dir.join("go").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (g, o) = SpectralGuard::cached(gpu, &w, "layers.0.w_down", RankRule::Rank(12), &SvdOptions::default(), &dir.join("cache")).unwrap();
    println!("RACE-RESULT {o:?} {}", revive::store::sha256_hex(bytemuck::cast_slice(&gpu.download(&g.u).unwrap())));
}

/// Two processes sharing one cache directory compute the same spectral basis at the same
/// moment: both succeed with the same basis, and the cache is left with one valid file that a
/// third lookup reuses (issue 13).
#[test]
fn two_processes_computing_one_basis_share_the_cache() {
    use revive::edit::guard::{RankRule, SpectralGuard};
    use revive::store::Outcome;
    for_each_gpu(|gpu| {
        let dir = std::env::temp_dir().join(format!("revive-cache-race-{}-{:?}", std::process::id(), gpu.info().backend));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spawn = || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_computes_a_cached_basis", "--nocapture", "--test-threads", "1"])
                .env("REVIVE_TEST_RACE_DIR", &dir)
                .env("REVIVE_TEST_CHILD_BACKEND", format!("{:?}", gpu.info().backend))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let children = [spawn(), spawn()];
        let waited = std::time::Instant::now();
        while std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ready-")).count() < 2 {
            if waited.elapsed().as_secs() > 300 {
                return Err("the children did not get ready".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::write(dir.join("go"), b"").unwrap();
        let mut results = vec![];
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.split("RACE-RESULT ").nth(1).ok_or_else(|| format!("a child failed: {stdout} {}", String::from_utf8_lossy(&out.stderr)))?;
            results.push(line.lines().next().unwrap_or_default().to_string());
        }
        let sums: Vec<&str> = results.iter().map(|r| r.rsplit(' ').next().unwrap_or_default()).collect();
        if sums[0] != sums[1] {
            return Err(format!("the two processes got different bases: {results:?}"));
        }
        let files: Vec<String> = std::fs::read_dir(dir.join("cache")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        if files.len() != 1 {
            return Err(format!("the cache holds {files:?}: one basis file expected, no temporaries"));
        }
        let w = ok(race_weight(gpu))?;
        let (g, o) = ok(SpectralGuard::cached(gpu, &w, "layers.0.w_down", RankRule::Rank(12), &SvdOptions::default(), &dir.join("cache")))?;
        let sum = revive::store::sha256_hex(bytemuck::cast_slice(&ok(gpu.download(&g.u))?));
        if o != Outcome::Reused || sum != sums[0] {
            return Err(format!("a third lookup: {o:?}, same basis: {}", sum == sums[0]));
        }
        println!("[{}] both processes: {results:?}", gpu.label());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    });
}

#[test]
fn the_subspace_iteration_reads_back_only_at_its_checks() {
    // A fresh device per adapter, so the readback counter sees this work alone. Between two
    // Rayleigh–Ritz checks the iteration stays on the GPU, wide blocks included (their
    // Cholesky QR used to be factorised on the host); a check reads back the p×p Rayleigh
    // quotient and the k residual norms, and the start one reduction.
    let fresh = revive::gpu::Gpu::all();
    assert_eq!(fresh.len(), gpus().len(), "every adapter the other tests use");
    for gpu in fresh {
        let gpu = gpu.expect("an adapter is present but its device failed to open").with_poison(true);
        let (m, n, k) = (300, 200, 10);
        let sigma: Vec<f64> = (0..200).map(|i| 0.985f64.powi(i)).collect();
        let w = ok(gpu.upload(&matrix_with_spectrum(&mut rng(41), m, n, &sigma), &[m, n])).unwrap();
        let before = gpu.runtime_stats();
        let got = top_k(&gpu, &w, k, &SvdOptions::default()).unwrap();
        let reads = (gpu.runtime_stats() - before).readbacks;
        eprintln!("{}: {} iterations, {} checks, {reads} readbacks", gpu.label(), got.iterations, got.checks);
        assert!(got.iterations >= 10, "{}: converged in {} iterations; the case should need more", gpu.label(), got.iterations);
        assert!(2 * got.checks <= got.iterations, "{}: {} checks in {} iterations", gpu.label(), got.checks, got.iterations);
        assert_eq!(reads, 1 + 2 * got.checks as u64, "{}: {reads} readbacks for {} checks", gpu.label(), got.checks);
        for (i, s) in got.sigma.iter().enumerate() {
            assert!((s - sigma[i]).abs() <= 1e-4 * sigma[i], "{}: σ_{i} {s} vs {}", gpu.label(), sigma[i]);
        }
        // With the small SVD on the GPU a check reads back 4 bytes per Jacobi sweep, σ (p values)
        // and the k residual norms: never the p×p quotient.
        let before = gpu.runtime_stats();
        let on_gpu = top_k(&gpu, &w, k, &SvdOptions { ritz: Ritz::Gpu, ..SvdOptions::default() }).unwrap();
        let used = gpu.runtime_stats() - before;
        let checks = on_gpu.checks as u64;
        eprintln!("{}: Jacobi: {checks} checks, {} sweeps, {} readbacks, {} bytes", gpu.label(), on_gpu.sweeps, used.readbacks, used.readback_bytes);
        assert_eq!(on_gpu.host_checks, 0, "{}", gpu.label());
        assert_eq!(used.readbacks, 1 + 2 * checks + on_gpu.sweeps as u64, "{}", gpu.label());
        assert_eq!(used.readback_bytes, 4 + checks * 4 * (on_gpu.block + k) as u64 + 4 * on_gpu.sweeps as u64, "{}", gpu.label());
        assert!(on_gpu.sweeps as u64 <= 6 * checks, "{}: {} sweeps in {checks} checks", gpu.label(), on_gpu.sweeps);
        for (i, s) in on_gpu.sigma.iter().enumerate() {
            assert!((s - sigma[i]).abs() <= 1e-4 * sigma[i], "{}: σ_{i} {s} vs {}", gpu.label(), sigma[i]);
        }
        let y = ok(gpu.upload(&random_vec(&mut rng(5), 1000 * 400), &[1000, 400])).unwrap();
        let before = gpu.runtime_stats();
        let q = orthonormalize(&gpu, &y, 1).unwrap();
        assert_eq!((gpu.runtime_stats() - before).readbacks, 0, "{}: orthonormalising 1000×400 read back", gpu.label());
        assert!(orthogonality_error(&gpu.download(&q).unwrap(), 1000, 400) < 1e-5, "{}: 1000×400 not orthonormal", gpu.label());
    }
}

/// max |S − U diag(σ) Vᵀ| for p×p row-major factors.
fn reconstruction_error(s: &[f32], u: &[f32], sigma: &[f32], v: &[f32], p: usize) -> f64 {
    let mut worst = 0f64;
    for r in 0..p {
        for c in 0..p {
            let x: f64 = (0..p).map(|k| u[r * p + k] as f64 * sigma[k] as f64 * v[c * p + k] as f64).sum();
            worst = worst.max((x - s[r * p + c] as f64).abs());
        }
    }
    worst
}

/// The Jacobi test matrices: (name, p, values).
fn jacobi_cases() -> Vec<(String, usize, Vec<f32>)> {
    let mut cases = vec![];
    for p in [1, 2, 3, 7, 31, 64, 65, 97, 130] {
        let sigma: Vec<f64> = (0..p).map(|i| 1e-3f64.powf(i as f64 / (p.max(2) - 1) as f64)).collect();
        cases.push((format!("graded {p}"), p, matrix_with_spectrum(&mut rng(p as u64 + 100), p, p, &sigma)));
    }
    // Three exactly zero columns: σ = 0 three times, U's columns there zero.
    let mut z = random_vec(&mut rng(7), 13 * 13);
    for r in 0..13 {
        for c in [2, 5, 12] {
            z[r * 13 + c] = 0.0;
        }
    }
    cases.push(("zero columns 13".into(), 13, z));
    // Columns 1 and 6 opposite: round 0 pairs them with equal norms and γ < 0, so ζ = −0, where
    // the kernel's sign rule (ζ ≥ 0 turns the positive way) must be the reference's too.
    let mut o = random_vec(&mut rng(6), 7 * 7);
    for r in 0..7 {
        o[r * 7 + 6] = -o[r * 7 + 1];
    }
    cases.push(("opposite columns 7".into(), 7, o));
    let repeated: Vec<f64> = (0..20).map(|i| if i < 4 { 2.0 } else if i < 9 { 1.0 } else { 0.1 }).collect();
    cases.push(("repeated 20".into(), 20, matrix_with_spectrum(&mut rng(8), 20, 20, &repeated)));
    cases
}

#[test]
fn jacobi_svd_matches_the_f64_reference() {
    for_each_gpu(|gpu| {
        for (name, p, s) in jacobi_cases() {
            let (_, want, _) = reference::svd(&s, p, p);
            let got = ok(jacobi_svd(gpu, &ok(gpu.upload(&s, &[p, p]))?))?;
            if !got.converged || got.sweeps >= MAX_SWEEPS {
                return Err(format!("{name}: {} sweeps, converged {}", got.sweeps, got.converged));
            }
            let (u, sigma, v) = (ok(gpu.download(&got.u))?, ok(gpu.download(&got.sigma))?, ok(gpu.download(&got.v))?);
            let top = want[0].max(f64::MIN_POSITIVE);
            for i in 0..p {
                if !((sigma[i] as f64 - want[i]).abs() <= 1e-6 * top) {
                    return Err(format!("{name}: σ_{i} = {} vs {} (σ₁ {top})", sigma[i], want[i]));
                }
            }
            let rec = reconstruction_error(&s, &u, &sigma, &v, p);
            if !(rec <= 1e-6 * top) {
                return Err(format!("{name}: |S − UΣVᵀ| = {rec:e} (σ₁ {top})"));
            }
            if !(orthogonality_error(&v, p, p) <= 2e-6) {
                return Err(format!("{name}: V is {:e} from orthogonal", orthogonality_error(&v, p, p)));
            }
            // U's columns with σ > 0 are orthonormal; those with σ = 0 are zero.
            let live = sigma.iter().filter(|&&x| x > 0.0).count();
            let u_live: Vec<f32> = (0..p).flat_map(|r| u[r * p..r * p + live].to_vec()).collect();
            if !(orthogonality_error(&u_live, p, live) <= jacobi_tolerance(p) as f64 + 5e-7) {
                return Err(format!("{name}: U's {live} columns are {:e} from orthonormal", orthogonality_error(&u_live, p, live)));
            }
            if (0..p).any(|r| u[r * p + live..r * p + p].iter().any(|&x| x != 0.0)) || (name.starts_with("zero") && live != p - 3) {
                return Err(format!("{name}: {live} columns with σ > 0, the rest of U not zero"));
            }
        }
        Ok(())
    });
}

#[test]
fn jacobi_sweeps_follow_the_reference_and_split_dispatches_agree() {
    use revive::gpu::SplitLimits;
    for_each_gpu(|gpu| {
        // Three workgroups per dispatch: the rounds' pairs, the norms and the scatter in pieces.
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: gpu.split_limits().max_binding_bytes });
        for (name, p, s) in jacobi_cases().into_iter().filter(|(_, p, _)| [7, 31, 65].contains(p)) {
            // After one and two sweeps (not converged), the same rotations as the f64 reference
            // in the same order: the pair schedule, the angle and the skip rule.
            for sweeps in [1, 2] {
                let (_, want_sigma, want_v, _) = revive::cpu::jacobi::one_sided_jacobi(&f64s(&s), p, jacobi_tolerance(p) as f64, sweeps);
                for g in [gpu, &small] {
                    let got = ok(jacobi_svd_with(g, &ok(g.upload(&s, &[p, p]))?, sweeps))?;
                    if got.sweeps != sweeps || got.converged {
                        return Err(format!("{name}: {sweeps}-sweep limit ran {} sweeps, converged {}", got.sweeps, got.converged));
                    }
                    let (sigma, v) = (ok(g.download(&got.sigma))?, ok(g.download(&got.v))?);
                    let ds = (0..p).map(|i| (sigma[i] as f64 - want_sigma[i]).abs()).fold(0.0, f64::max);
                    let dv = (0..p * p).map(|i| (v[i] as f64 - want_v[i]).abs()).fold(0.0, f64::max);
                    if !(ds <= 1e-5 * want_sigma[0] && dv <= 1e-3) {
                        return Err(format!("{name} after {sweeps} sweeps ({}): σ off by {ds:e}, V by {dv:e}", g.label()));
                    }
                }
            }
        }
        // A NaN reaches the host at the front of σ, whatever the other values.
        let mut s = random_vec(&mut rng(3), 25);
        s[17] = f32::NAN;
        let got = ok(jacobi_svd(gpu, &ok(gpu.upload(&s, &[5, 5]))?))?;
        let sigma = ok(gpu.download(&got.sigma))?;
        if !sigma[0].is_nan() {
            return Err(format!("a NaN in S gave σ {sigma:?}"));
        }
        Ok(())
    });
}

#[test]
fn a_rank_deficient_square_block_falls_back_to_the_host() {
    // W = S itself (the block is square, so Q = Z = I): exact zero columns give σ_k = 0, where
    // the GPU's U column is undefined; that check runs on the host and U stays orthonormal.
    for_each_gpu(|gpu| {
        let (n, zero) = (6, [1, 4]);
        let mut w = random_vec(&mut rng(9), n * n);
        for r in 0..n {
            for c in zero {
                w[r * n + c] = 0.0;
            }
        }
        let got = ok(top_k(gpu, &ok(gpu.upload(&w, &[n, n]))?, n, &SvdOptions { ritz: Ritz::Gpu, ..SvdOptions::default() }))?;
        if got.host_checks == 0 || got.sweeps == 0 {
            return Err(format!("{} checks, {} on the host, {} sweeps", got.checks, got.host_checks, got.sweeps));
        }
        let (_, want, _) = reference::svd(&w, n, n);
        if (0..n).any(|i| (got.sigma[i] - want[i]).abs() > 1e-5 * want[0]) {
            return Err(format!("σ {:?} vs {want:?}", got.sigma));
        }
        if orthogonality_error(&ok(gpu.download(&got.u))?, n, n) > 1e-5 {
            return Err("U is not orthonormal".into());
        }
        Ok(())
    });
}
