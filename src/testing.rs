//! Helpers shared by the tests and benchmarks: seeded random data and the GPU-vs-oracle
//! comparison with a failure message that says where and by how much.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1).
pub fn random_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
    /// Bound on ||got - want|| / ||want||.
    pub rel_norm: f64,
}

impl Tolerance {
    pub const F32: Tolerance = Tolerance { atol: 1e-5, rtol: 1e-5, rel_norm: 1e-5 };
    pub fn new(atol: f64, rtol: f64, rel_norm: f64) -> Self {
        Tolerance { atol, rtol, rel_norm }
    }
}

/// Checks `got` against the oracle: every element within atol + rtol*|want|, the relative
/// norm of the difference within rel_norm, and no NaN or infinity anywhere.
pub fn compare(what: &str, got: &[f32], want: &[f64], tol: Tolerance) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let mut bad = 0usize;
    let mut worst: Option<(usize, f64)> = None;
    let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let err = (g - w).abs();
        let ok = g.is_finite() && err <= tol.atol + tol.rtol * w.abs();
        if !ok {
            bad += 1;
        }
        let excess = if g.is_finite() { err - (tol.atol + tol.rtol * w.abs()) } else { f64::INFINITY };
        if worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
        diff2 += if g.is_finite() { err * err } else { f64::INFINITY };
        ref2 += w * w;
    }
    let rel = if ref2 > 0.0 { (diff2 / ref2).sqrt() } else { diff2.sqrt() };
    // Negated on purpose: a NaN norm must fail.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if bad > 0 || !(rel <= tol.rel_norm) {
        let (i, _) = worst.unwrap_or((0, 0.0));
        return Err(format!(
            "{what}: {bad} of {} elements out of tolerance (atol {:e}, rtol {:e}); worst at index {i}: got {} expected {}; ||diff||/||ref|| = {rel:e} (bound {:e})",
            got.len(),
            tol.atol,
            tol.rtol,
            got[i],
            want[i],
            tol.rel_norm
        ));
    }
    Ok(())
}

/// The real model for tests: `$REVIVE_SMOLLM2` if set, else the cached file `revive setup`
/// writes. None (the test prints that it is skipped) unless `REVIVE_REQUIRE_MODEL=1`, which CI
/// sets after `revive setup`: then a missing model fails the test.
pub fn smollm2_for_tests() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("REVIVE_SMOLLM2")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([crate::model::fetch::smollm2_path()])
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("REVIVE_REQUIRE_MODEL").as_deref() != Ok("1"),
            "REVIVE_REQUIRE_MODEL=1 but the SmolLM2 GGUF is absent: run `revive setup`"
        );
        println!("SKIPPED: SmolLM2 not found (run `revive setup` or set REVIVE_SMOLLM2)");
    }
    found
}

/// Checks an analytic gradient of the scalar function `f` at `x` against central differences
/// (step `h`, O(h²) truncation) on up to `samples` coordinates spread evenly over `x`. Each
/// sampled coordinate must satisfy |fd − grad| ≤ tol · max(1, |fd|). Written for f64 oracles:
/// with h ≈ 1e-5 the difference quotient is good to ~1e-9, so a tol of 1e-6 leaves margin
/// while still catching a gradient that is off by 0.1% anywhere it is sampled.
pub fn check_gradient(
    what: &str,
    f: impl Fn(&[f64]) -> f64,
    x: &[f64],
    grad: &[f64],
    samples: usize,
    h: f64,
    tol: f64,
) -> Result<(), String> {
    if grad.len() != x.len() {
        return Err(format!("{what}: gradient has {} values for {} inputs", grad.len(), x.len()));
    }
    let n = x.len();
    let take = samples.min(n);
    let mut xp = x.to_vec();
    for s in 0..take {
        // Evenly spread, always including the first and last coordinate.
        let i = if take == 1 { 0 } else { s * (n - 1) / (take - 1) };
        let old = xp[i];
        xp[i] = old + h;
        let fp = f(&xp);
        xp[i] = old - h;
        let fm = f(&xp);
        xp[i] = old;
        let fd = (fp - fm) / (2.0 * h);
        let err = (fd - grad[i]).abs();
        if err.is_nan() || err > tol * fd.abs().max(1.0) {
            return Err(format!("{what}: coordinate {i}: analytic {} vs central difference {fd} (error {err:e}, bound {:e})", grad[i], tol * fd.abs().max(1.0)));
        }
    }
    Ok(())
}

/// An n×k matrix (row-major, f64) with orthonormal columns: Gram–Schmidt, twice, of Gaussian
/// columns.
pub fn random_orthonormal(rng: &mut StdRng, n: usize, k: usize) -> Vec<f64> {
    assert!(k <= n, "{k} orthonormal columns do not fit in dimension {n}");
    let mut cols: Vec<Vec<f64>> = vec![];
    while cols.len() < k {
        let mut c: Vec<f64> = (0..n).map(|_| gaussian(rng)).collect();
        for _ in 0..2 {
            for q in &cols {
                let d: f64 = q.iter().zip(&c).map(|(a, b)| a * b).sum();
                c.iter_mut().zip(q).for_each(|(x, q)| *x -= d * q);
            }
        }
        let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-8 {
            cols.push(c.into_iter().map(|x| x / norm).collect());
        }
    }
    (0..n).flat_map(|i| cols.iter().map(move |c| c[i])).collect()
}

/// A standard normal value (Box–Muller).
pub fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An m×n matrix (row-major f32) with the given singular values (at most min(m, n), the rest
/// zero) and random singular vectors.
pub fn matrix_with_spectrum(rng: &mut StdRng, m: usize, n: usize, sigma: &[f64]) -> Vec<f32> {
    let r = sigma.len();
    let u = random_orthonormal(rng, m, r);
    let v = random_orthonormal(rng, n, r);
    let mut w = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            w[i * n + j] = (0..r).map(|c| u[i * r + c] * sigma[c] * v[j * r + c]).sum::<f64>() as f32;
        }
    }
    w
}
