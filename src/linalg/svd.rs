//! Top-k singular triplets on the GPU by block power (subspace) iteration, with a Rayleigh–Ritz
//! step every few iterations:
//!
//!   each iteration:  Y = W Z;  Q = orth(Y);  X = Wᵀ Q;  Z ← orth(X)       (all on the GPU)
//!   at a check:      S = Xᵀ Z (= Qᵀ W Z, p×p);  S = Ũ Σ Ṽᵀ (GPU Jacobi, or host f64);
//!                    U = Q Ũ;  Z ← Z Ṽ;  Y = W Z;  converged when max_i ‖Y_i − σ_i U_i‖ ≤ tol·σ₁
//!
//! The block has p = k + oversampling columns (at most min(m, n)), so the k-th triplet
//! converges at the rate (σ_{p+1}/σ_k)² per iteration rather than (σ_{k+1}/σ_k)². Between checks
//! nothing is read back: the span is what converges, and rotating Z inside it changes neither
//! the next span nor the conditioning of W Z (Z stays orthonormal), so Rayleigh–Ritz is only
//! needed to read the triplets off. On a GPU a check's small SVD runs there too (one-sided
//! Jacobi, src/ops/jacobi.rs): it reads back 4 bytes per Jacobi sweep, then σ (p values) and
//! the k residual norms; on a CPU adapter, where a round trip is a copy within host memory, the
//! p×p quotient goes to faer's f64 SVD instead ([`Ritz`]). The next check is placed where the
//! residual's decay rate so far says it will reach the tolerance, at most [`MAX_CHECK_GAP`]
//! iterations on. Convergence is judged on
//! the true residuals of the first k triplets, ‖W v_i − σ_i u_i‖ ≤ tol · σ_1, computed from the Y
//! the next iteration needs anyway. At the iteration cap the result is an error that says how
//! far it got, never a silently unconverged basis.
//!
//! The same routine gives the top eigenpairs of a symmetric positive semi-definite matrix
//! (U = V, σ = λ): [`top_eigen`].

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::elementwise::{copy_strided, View};
use crate::ops::jacobi::jacobi_svd;
use crate::ops::matmul::{gemm, Gemm, Shape};
use crate::ops::ortho::{orthonormalize, ritz_residual, span_basis};
use crate::ops::reduce::{reduce_all_value, reduce_rows, ReduceOp};
use faer::Mat;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SvdOptions {
    /// Converged when every one of the top k residuals ‖W v_i − σ_i u_i‖ is at most tol · σ_1.
    pub tol: f64,
    pub max_iters: usize,
    /// Extra block columns; None: max(16, k / 2).
    pub oversample: Option<usize>,
    pub seed: u64,
    /// Where a check's p×p SVD runs.
    pub ritz: Ritz,
}

impl Default for SvdOptions {
    fn default() -> Self {
        SvdOptions { tol: 2e-5, max_iters: 300, oversample: None, seed: 0x5eed, ritz: Ritz::Auto }
    }
}

/// Where the Rayleigh–Ritz step's small SVD runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ritz {
    /// On the GPU, unless the adapter is a CPU (lavapipe, llvmpipe): there the "GPU" is the
    /// host, the round trip is a copy, and faer's SVD beats p' − 1 emulated dispatches per sweep.
    Auto,
    /// One-sided Jacobi on the GPU (src/ops/jacobi.rs); a check that it cannot finish (no
    /// convergence in its sweep limit, or σ_k = 0: a matrix of rank below k) falls back to the
    /// host and is counted in [`TopK::host_checks`].
    Gpu,
    /// faer's f64 SVD of the downloaded p×p quotient.
    Host,
}

impl std::str::FromStr for Ritz {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Ritz::Auto),
            "gpu" => Ok(Ritz::Gpu),
            "host" => Ok(Ritz::Host),
            _ => Err(format!("{s:?}: expected auto, gpu or host")),
        }
    }
}

impl Ritz {
    fn on_gpu(self, gpu: &Gpu) -> bool {
        match self {
            Ritz::Auto => !gpu.is_cpu(),
            Ritz::Gpu => true,
            Ritz::Host => false,
        }
    }
}

/// The top k singular triplets of an m×n matrix: W ≈ U diag(σ) Vᵀ on those k.
#[derive(Debug, Clone)]
pub struct TopK {
    /// m×k, orthonormal columns.
    pub u: Tensor,
    /// n×k, orthonormal columns.
    pub v: Tensor,
    /// Non-increasing.
    pub sigma: Vec<f64>,
    pub iterations: usize,
    /// Rayleigh–Ritz checks (the iteration's only readbacks) among those iterations.
    pub checks: usize,
    /// Checks whose small SVD ran on the host.
    pub host_checks: usize,
    /// Jacobi sweeps of the checks that ran on the GPU, together.
    pub sweeps: usize,
    /// max_i ‖W v_i − σ_i u_i‖ / σ_1 at the end.
    pub residual: f64,
    /// The block width used.
    pub block: usize,
}

fn dims(w: &Tensor) -> Result<(usize, usize)> {
    match *w.shape() {
        [m, n] if m > 0 && n > 0 => Ok((m, n)),
        _ => Err(Error::shape("svd", format!("{:?} is not a non-empty matrix", w.shape()))),
    }
}

/// The first `k` columns of an r×c matrix, as a dense r×k tensor.
pub fn leading_columns(gpu: &Gpu, x: &Tensor, k: usize) -> Result<Tensor> {
    let (r, c) = (x.shape()[0], x.shape()[1]);
    if k == c {
        return Ok(x.clone());
    }
    let out = gpu.empty(&[r, k])?;
    copy_strided(gpu, x, View { offset: 0, strides: [0, 0, c, 1] }, &out, View::dense(&[r, k]), &[r, k])?;
    Ok(out)
}

fn random_block(gpu: &Gpu, rows: usize, cols: usize, seed: u64, keep: Option<&[f32]>) -> Result<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // A warm start: the given leading columns (rows × kept) replace the first random ones.
    if let Some(prev) = keep {
        let kept = prev.len() / rows;
        for r in 0..rows {
            data[r * cols..r * cols + kept].copy_from_slice(&prev[r * kept..(r + 1) * kept]);
        }
    }
    gpu.upload(&data, &[rows, cols])
}

/// Top-k singular triplets of `w` (m×n, f32 on the GPU), 1 ≤ k ≤ min(m, n).
pub fn top_k(gpu: &Gpu, w: &Tensor, k: usize, opts: &SvdOptions) -> Result<TopK> {
    top_k_from(gpu, w, k, opts, None)
}

/// [`top_k`] starting from `start` (n×j, j ≤ block) as the leading block columns.
pub fn top_k_from(gpu: &Gpu, w: &Tensor, k: usize, opts: &SvdOptions, start: Option<&Tensor>) -> Result<TopK> {
    let (m, n) = dims(w)?;
    let min_dim = m.min(n);
    if k == 0 || k > min_dim {
        return Err(Error::shape("svd", format!("rank {k} is outside 1..={min_dim} for a {m}×{n} matrix")));
    }
    let sumsq = reduce_all_value(gpu, w, ReduceOp::SumSq)?;
    if !sumsq.is_finite() {
        return Err(Error::Numeric(format!("svd: the {m}×{n} matrix has non-finite entries")));
    }
    if sumsq == 0.0 {
        return Err(Error::Numeric(format!("svd: the {m}×{n} matrix is zero; it has no dominant subspace")));
    }
    let p = block_width(k, min_dim, opts);
    let keep = match start {
        Some(s) if s.shape().len() == 2 && s.shape()[0] == n && s.shape()[1] <= p => Some(gpu.download(s)?),
        Some(s) => return Err(Error::shape("svd", format!("start block {:?} does not fit {n}×{p}", s.shape()))),
        None => None,
    };
    let seed32 = |i: u64| (opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i) >> 16) as u32;
    let mut z = block_basis(gpu, &random_block(gpu, n, p, opts.seed, keep.as_deref())?, seed32(0), BasisKind::Orthonormal)?;
    let mut y = gemm(gpu, w, &z, None, Gemm::default())?;
    let mut last: Option<(usize, f64)> = None;
    let mut next_check = 1;
    let mut checks = 0;
    let (mut host_checks, mut sweeps) = (0, 0);
    for it in 1..=opts.max_iters {
        // Between checks the iteration carries a span, not a projection: a cheaper basis does.
        let check = it >= next_check || it == opts.max_iters;
        let basis = if check { BasisKind::Orthonormal } else { BasisKind::Span };
        let q = block_basis(gpu, &y, seed32(2 * it as u64), basis)?;
        let x = gemm(gpu, w, &q, None, Gemm { trans_a: true, ..Gemm::default() })?;
        let zn = block_basis(gpu, &x, seed32(2 * it as u64 + 1), basis)?;
        if !check {
            z = zn;
            y = gemm(gpu, w, &z, None, Gemm::default())?;
            continue;
        }
        checks += 1;
        let s = gemm(gpu, &x, &zn, None, Gemm { trans_a: true, ..Gemm::default() })?;
        let small = ritz_svd(gpu, &s, k, opts.ritz)?;
        host_checks += small.on_host as usize;
        sweeps += small.sweeps;
        let sigma = small.sigma;
        let u = gemm(gpu, &q, &small.u, None, Gemm::default())?;
        z = gemm(gpu, &zn, &small.v, None, Gemm::default())?;
        y = gemm(gpu, w, &z, None, Gemm::default())?;
        let e = ritz_residual(gpu, &y, &u, &small.sigma_gpu, k)?;
        // k squared norms (a max on the GPU could drop a NaN: WGSL leaves max(NaN, x) open).
        let norms = gpu.download(&reduce_rows(gpu, &e, ReduceOp::SumSq)?)?;
        let worst = norms.iter().map(|&r| (r as f64).sqrt()).fold(0.0, |a: f64, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }) / sigma[0];
        if !worst.is_finite() {
            return Err(Error::Numeric(format!("svd: the residual became non-finite at iteration {it}")));
        }
        if worst <= opts.tol {
            return Ok(TopK {
                u: leading_columns(gpu, &u, k)?,
                v: leading_columns(gpu, &z, k)?,
                sigma: sigma[..k].to_vec(),
                iterations: it,
                checks,
                host_checks,
                sweeps,
                residual: worst,
                block: p,
            });
        }
        next_check = it + check_gap(last, it, worst, opts.tol);
        last = Some((it, worst));
    }
    let last = last.map_or(f64::NAN, |(_, r)| r);
    Err(Error::Numeric(format!(
        "svd: top-{k} of a {m}×{n} matrix did not converge in {} iterations (block {p}): residual {last:.2e} σ₁, tolerance {:.2e}; raise the iteration cap or the oversampling",
        opts.max_iters, opts.tol
    )))
}

/// Columns of the iterated block for the top k of a matrix whose smaller side is `min_dim`:
/// k plus the oversampling (by default k/2, at least 16).
pub fn block_width(k: usize, min_dim: usize, opts: &SvdOptions) -> usize {
    (k + opts.oversample.unwrap_or((k / 2).max(16))).min(min_dim)
}

/// The products one iteration and one check of [`top_k`] run on an m×n matrix with a block of
/// p columns, for measuring the matmul kernels before use (`model::tuning`, `revive bench
/// svd`): W·Z and Wᵀ·Q, the Gram matrices of the two orthonormalisations, their solves
/// Y·L⁻ᵀ, the Rayleigh quotient and the rotations by the small SVD's factors.
pub fn product_shapes(m: usize, n: usize, p: usize) -> Vec<Shape> {
    let s = |m, n, k, trans_a, trans_b| Shape { m, n, k, trans_a, trans_b };
    vec![
        s(m, p, n, false, false),
        s(n, p, m, true, false),
        s(p, p, m, true, false),
        s(p, p, n, true, false),
        s(m, p, p, false, true),
        s(n, p, p, false, true),
        s(m, p, p, false, false),
        s(n, p, p, false, false),
    ]
}

/// The most iterations between two Rayleigh–Ritz checks: a slower prediction than the truth
/// costs at most this many iterations more than checking every time.
pub const MAX_CHECK_GAP: usize = 8;

/// Iterations until the next check, from the residual's geometric decay between the previous
/// check (`last`: iteration, residual) and this one: enough to reach `tol` at that rate, at
/// least 1 and at most [`MAX_CHECK_GAP`]; 2 while there is no rate yet (or it is not falling).
fn check_gap(last: Option<(usize, f64)>, it: usize, worst: f64, tol: f64) -> usize {
    let Some((then, before)) = last else { return 2 };
    let rate = (worst / before).powf(1.0 / (it - then) as f64);
    if !(rate > 0.0 && rate < 1.0) {
        return 2;
    }
    let needed = ((tol / worst).ln() / rate.ln()).ceil();
    if needed.is_finite() { (needed as usize).clamp(1, MAX_CHECK_GAP) } else { MAX_CHECK_GAP }
}

/// A basis of a space containing the block's columns, orthonormal or only of the right span as
/// `basis` asks. A square block (the block is
/// as wide as the matrix is tall or wide: k near min(m, n)) spans the whole space, so the
/// identity is such a basis, and Rayleigh–Ritz on it is exact; orthonormalising it instead
/// would ask f32 Cholesky QR to resolve directions the square block barely reaches.
fn block_basis(gpu: &Gpu, y: &Tensor, seed: u32, basis: BasisKind) -> Result<Tensor> {
    match (y.shape(), basis) {
        (&[r, c], _) if r == c => gpu.identity(r),
        (_, BasisKind::Orthonormal) => orthonormalize(gpu, y, seed),
        (_, BasisKind::Span) => span_basis(gpu, y, seed),
    }
}

/// What an iteration needs of its bases: orthonormal where Rayleigh–Ritz projects on them,
/// only full rank over the right span in between.
#[derive(Clone, Copy)]
enum BasisKind {
    Orthonormal,
    Span,
}

/// The small SVD of a check: Ũ, Ṽ (p×p) and σ (on the GPU and read back), columns by
/// non-increasing σ.
struct RitzSvd {
    u: Tensor,
    v: Tensor,
    sigma_gpu: Tensor,
    sigma: Vec<f64>,
    sweeps: usize,
    on_host: bool,
}

/// The SVD of the p×p Rayleigh quotient `s` where `ritz` says, falling back to the host when
/// the GPU's Jacobi does not converge or leaves σ_k at zero (U's column k is then undefined).
fn ritz_svd(gpu: &Gpu, s: &Tensor, k: usize, ritz: Ritz) -> Result<RitzSvd> {
    let p = s.shape()[0];
    let mut sweeps = 0;
    if ritz.on_gpu(gpu) {
        let j = jacobi_svd(gpu, s)?;
        let sigma: Vec<f64> = gpu.download(&j.sigma)?.into_iter().map(f64::from).collect();
        if let Some(i) = sigma.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("svd: the projected {p}×{p} matrix has a non-finite singular value ({} at place {i})", sigma[i])));
        }
        if j.converged && sigma[k - 1] > 0.0 {
            return Ok(RitzSvd { u: j.u, v: j.v, sigma_gpu: j.sigma, sigma, sweeps: j.sweeps, on_host: false });
        }
        sweeps = j.sweeps;
    }
    let (u, sigma, v) = small_svd(&gpu.download(s)?, p)?;
    let sigma_gpu = gpu.upload(&sigma.iter().map(|&s| s as f32).collect::<Vec<_>>(), &[p])?;
    Ok(RitzSvd { u: gpu.upload(&u, &[p, p])?, v: gpu.upload(&v, &[p, p])?, sigma_gpu, sigma, sweeps, on_host: true })
}

/// SVD of the p×p Rayleigh quotient in f64: (Ũ, σ, Ṽ) as row-major f32 with columns sorted by
/// non-increasing σ.
fn small_svd(s: &[f32], p: usize) -> Result<(Vec<f32>, Vec<f64>, Vec<f32>)> {
    if let Some(i) = s.iter().position(|v| !v.is_finite()) {
        return Err(Error::Numeric(format!("svd: the projected {p}×{p} matrix has a non-finite entry at {i}")));
    }
    let mat = Mat::<f64>::from_fn(p, p, |i, j| s[i * p + j] as f64);
    let svd = mat.svd().map_err(|e| Error::Numeric(format!("svd: the {p}×{p} Rayleigh–Ritz SVD failed: {e:?}")))?;
    let sv = svd.S().column_vector();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&a, &b| sv[b].total_cmp(&sv[a]));
    let (u, v) = (svd.U(), svd.V());
    let mut us = vec![0f32; p * p];
    let mut vs = vec![0f32; p * p];
    for (col, &src) in order.iter().enumerate() {
        for r in 0..p {
            us[r * p + col] = u[(r, src)] as f32;
            vs[r * p + col] = v[(r, src)] as f32;
        }
    }
    Ok((us, order.iter().map(|&i| sv[i]).collect(), vs))
}

/// The top-k eigenpairs of a symmetric positive semi-definite n×n matrix (e.g. C0): the
/// eigenvectors (n×k) and eigenvalues, non-increasing.
pub fn top_eigen(gpu: &Gpu, a: &Tensor, k: usize, opts: &SvdOptions) -> Result<(Tensor, Vec<f64>)> {
    let (m, n) = dims(a)?;
    if m != n {
        return Err(Error::shape("top_eigen", format!("{m}×{n} is not square")));
    }
    let r = top_k(gpu, a, k, opts)?;
    Ok((r.u, r.sigma))
}

/// The smallest k whose leading energy Σ_{i≤k} σ_i² reaches `tau` of `total` (‖W‖_F²), if the
/// given values reach it.
pub fn rank_for_energy(sigma: &[f64], total: f64, tau: f64) -> Option<usize> {
    let mut acc = 0.0;
    for (i, s) in sigma.iter().enumerate() {
        acc += s * s;
        if acc >= tau * total {
            return Some(i + 1);
        }
    }
    None
}

/// The top triplets whose energy reaches τ of ‖W‖_F², 0 < τ ≤ 1: the block grows (doubling,
/// warm-started from the last basis) until the converged values cover τ.
pub fn top_energy(gpu: &Gpu, w: &Tensor, tau: f64, opts: &SvdOptions) -> Result<(TopK, f64)> {
    let (m, n) = dims(w)?;
    if !(tau > 0.0 && tau <= 1.0) {
        return Err(Error::Edit(format!("the energy fraction τ must be in (0, 1], got {tau}")));
    }
    let total = reduce_all_value(gpu, w, ReduceOp::SumSq)? as f64;
    let min_dim = m.min(n);
    // τ²·min(m, n) covers τ on SmolLM2's flat spectra (τ = 0.5: 144 ≥ k = 136) in one go; a
    // concentrated spectrum needs fewer, a flatter one a doubling or two.
    let mut k = ((tau * tau * min_dim as f64).ceil() as usize).max(8).min(min_dim);
    let mut start: Option<Tensor> = None;
    loop {
        let r = top_k_from(gpu, w, k, opts, start.as_ref())?;
        // At full rank the values are all of the energy, whatever rounding says.
        let found = rank_for_energy(&r.sigma, total, tau).or((k == min_dim).then_some(k));
        if let Some(kk) = found {
            let out = TopK { u: leading_columns(gpu, &r.u, kk)?, v: leading_columns(gpu, &r.v, kk)?, sigma: r.sigma[..kk].to_vec(), ..r };
            return Ok((out, total));
        }
        start = Some(r.v);
        k = (2 * k).min(min_dim);
    }
}

#[cfg(test)]
mod tests {
    use super::{check_gap, MAX_CHECK_GAP};

    #[test]
    fn the_next_check_follows_the_residual_decay() {
        // No rate yet, or a residual that did not fall: check again soon.
        assert_eq!(check_gap(None, 1, 1e-2, 1e-5), 2);
        assert_eq!(check_gap(Some((1, 1e-3)), 3, 2e-3, 1e-5), 2);
        assert_eq!(check_gap(Some((1, f64::NAN)), 3, 1e-3, 1e-5), 2);
        // Halving per iteration from 1.6e-4 to 2e-5 takes 3 more iterations.
        assert_eq!(check_gap(Some((1, 6.4e-4)), 3, 1.6e-4, 2e-5), 3);
        // A slow decay is capped; a fast one waits at least one iteration.
        assert_eq!(check_gap(Some((1, 1.0)), 2, 0.99, 1e-5), MAX_CHECK_GAP);
        assert_eq!(check_gap(Some((1, 1.0)), 2, 1e-4, 9e-5), 1);
    }
}
