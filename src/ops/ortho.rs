//! Orthonormalisation of a tall matrix's columns by Cholesky QR on the GPU (shaders/ortho.wgsl),
//! and the Ritz residuals the subspace iteration checks its convergence with.
//!
//! One pass: G = YᵀY (matmul), L = chol(G) (one workgroup), Q = Y L⁻ᵀ (matmul with the
//! triangular inverse). Two passes (CholeskyQR2) give orthonormality to working precision
//! when Y is not too ill-conditioned after column scaling; columns that are linearly dependent
//! to working precision are detected by the factorisation, replaced by random directions and
//! orthonormalised against the rest in the next pass, so the result always has full rank.

use super::{groups, whole};
use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::ORTHO;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    n: u32,
    m: u32,
    k: u32,
    seed: u32,
    tol: f32,
    ld: u32,
    base: u32,
    shift: f32,
}

fn meta(n: usize, m: usize, k: usize, ld: usize, seed: u32, tol: f32) -> Meta {
    Meta { n: n as u32, m: m as u32, k: k as u32, seed, tol, ld: ld as u32, base: 0, shift: 0.0 }
}

/// The shift of the first pass, relative to trace(YᵀY) for an m×n block: Fukaya et al.'s
/// 11(mn + n(n+1))·u·‖Y‖₂², with ‖Y‖₂² bounded below by trace/n. Large enough that the f32
/// factorisation of YᵀY + sI cannot break down; small enough that Q = Y R⁻¹ keeps every
/// direction of Y whose singular value is above √s.
pub fn cholqr_shift(m: usize, n: usize) -> f32 {
    (11.0 * (m * n + n * (n + 1)) as f64 * f32::EPSILON as f64 / 2.0 / n as f64) as f32
}

/// Runs a 1-D entry point over `n` elements in pieces of at most one dispatch each (the whole
/// tensors stay bound; `base` tells each piece where it starts).
fn run_pieces(gpu: &Gpu, entry: &'static str, mut m: Meta, n: usize, binds: &[crate::gpu::Bind<'_>]) -> Result<()> {
    for (start, len) in super::chunks(n, gpu.split_limits().max_workgroups as usize * 256) {
        m.base = start as u32;
        gpu.dispatch(ORTHO, entry, &[], bytemuck::bytes_of(&m), binds, [groups(len, 256), 1, 1])?;
    }
    Ok(())
}

/// The largest block the one-workgroup GPU factorisation takes. Above it the kernels gave wrong
/// factors on llvmpipe (tri_inverse from n = 384, cholesky from n = 512, on Vulkan and GL alike;
/// the cause was not found), so wider blocks are factorised on the host in f64: one p×p
/// download and upload per pass, the same traffic as the Rayleigh–Ritz step.
pub const GPU_FACTOR_MAX: usize = 320;

/// A pivot below this fraction of its column's squared norm means the column is dependent on
/// the earlier ones: f32 Cholesky loses the remaining digits of such a column to rounding
/// (about n·ε relative), so it is safer to replace it than to normalise noise.
pub fn dead_tolerance(n: usize) -> f32 {
    (64.0 * n as f32 * f32::EPSILON).max(1e-5)
}

/// The lower Cholesky factor of a symmetric n×n matrix, and the dead-column flags
/// (`aux` = [original diagonal | flags], 2n values; flag 1.0 = dead).
pub fn cholesky(gpu: &Gpu, g: &Tensor, tol: f32) -> Result<(Tensor, Tensor)> {
    cholesky_shifted(gpu, g, tol, 0.0)
}

/// [`cholesky`] of G + shift·trace(G)·I.
pub fn cholesky_shifted(gpu: &Gpu, g: &Tensor, tol: f32, shift: f32) -> Result<(Tensor, Tensor)> {
    let &[n, n2] = g.shape() else { return Err(Error::shape("cholesky", format!("{:?} is not 2-D", g.shape()))) };
    if n != n2 || n == 0 {
        return Err(Error::shape("cholesky", format!("{:?} is not a non-empty square matrix", g.shape())));
    }
    if n > GPU_FACTOR_MAX {
        return Err(Error::TooLarge { op: "cholesky", detail: format!("{n}×{n} is wider than the GPU factorisation's {GPU_FACTOR_MAX}") });
    }
    let l = gpu.empty(&[n, n])?;
    super::elementwise::copy_strided(gpu, g, super::elementwise::View::dense(&[n, n]), &l, super::elementwise::View::dense(&[n, n]), &[n, n])?;
    let aux = gpu.empty(&[2 * n])?;
    let m = Meta { shift, ..meta(n, 0, 0, 0, 0, tol) };
    gpu.dispatch(ORTHO, "cholesky", &[], bytemuck::bytes_of(&m), &[whole(gpu, &l)?, whole(gpu, &aux)?], [1, 1, 1])?;
    Ok((l, aux))
}

/// L⁻¹ of a lower-triangular factor from [`cholesky`]; dead columns get a zero diagonal.
pub fn tri_inverse(gpu: &Gpu, l: &Tensor, aux: &Tensor) -> Result<Tensor> {
    let n = l.shape()[0];
    if n > GPU_FACTOR_MAX {
        return Err(Error::TooLarge { op: "tri_inverse", detail: format!("{n}×{n} is wider than the GPU factorisation's {GPU_FACTOR_MAX}") });
    }
    let inv = gpu.empty(&[n, n])?;
    let m = meta(n, 0, 0, 0, 0, 0.0);
    gpu.dispatch(ORTHO, "tri_inverse", &[], bytemuck::bytes_of(&m), &[whole(gpu, l)?, whole(gpu, aux)?, whole(gpu, &inv)?], [groups(n, 64), 1, 1])?;
    Ok(inv)
}

/// One Cholesky QR pass: (Q, aux) with Q = Y L⁻ᵀ; dead columns of Q are zero.
pub fn cholesky_qr_pass(gpu: &Gpu, y: &Tensor) -> Result<(Tensor, Tensor)> {
    shifted_qr_pass(gpu, y, 0.0)
}

/// A Cholesky QR pass on YᵀY + shift·trace·I.
fn shifted_qr_pass(gpu: &Gpu, y: &Tensor, shift: f32) -> Result<(Tensor, Tensor)> {
    let n = y.shape()[1];
    let g = gemm(gpu, y, y, None, Gemm { trans_a: true, ..Gemm::default() })?;
    let (inv, aux) = if n <= GPU_FACTOR_MAX {
        let (l, aux) = cholesky_shifted(gpu, &g, dead_tolerance(n), shift)?;
        (tri_inverse(gpu, &l, &aux)?, aux)
    } else {
        host_factor(gpu, &g, shift)?
    };
    let q = gemm(gpu, y, &inv, None, Gemm { trans_b: true, ..Gemm::default() })?;
    Ok((q, aux))
}

/// The same factorisation as the kernels (shift, dead columns, L⁻¹ with zero diagonal at dead
/// columns), on the host in f64: (L⁻¹, aux) as the GPU path gives them.
fn host_factor(gpu: &Gpu, g: &Tensor, shift: f32) -> Result<(Tensor, Tensor)> {
    let n = g.shape()[0];
    let mut gd: Vec<f64> = gpu.download(g)?.into_iter().map(f64::from).collect();
    if let Some(i) = gd.iter().position(|v| !v.is_finite()) {
        return Err(Error::Numeric(format!("orthonormalize: the {n}×{n} Gram matrix has a non-finite entry at {i}")));
    }
    let add = shift as f64 * (0..n).map(|i| gd[i * n + i]).sum::<f64>();
    (0..n).for_each(|i| gd[i * n + i] += add);
    let (l, dead) = crate::cpu::ortho::cholesky(&gd, n, dead_tolerance(n) as f64);
    let inv = crate::cpu::ortho::tri_inverse(&l, n, &dead);
    let aux: Vec<f32> = (0..n).map(|i| gd[i * n + i] as f32).chain(dead.iter().map(|&d| if d { 1.0 } else { 0.0 })).collect();
    Ok((gpu.upload(&inv.iter().map(|&v| v as f32).collect::<Vec<_>>(), &[n, n])?, gpu.upload(&aux, &[2 * n])?))
}

/// Fills the dead columns (per `aux`) of an m×n matrix with values in [-1, 1) from `seed`.
pub fn fill_dead(gpu: &Gpu, q: &Tensor, aux: &Tensor, seed: u32) -> Result<()> {
    let (m, n) = (q.shape()[0], q.shape()[1]);
    run_pieces(gpu, "fill_dead", meta(n, m, 0, 0, seed, 0.0), m * n, &[whole(gpu, aux)?, whole(gpu, q)?])
}

/// Orthonormal columns spanning those of Y (m×n, m ≥ n), with dependent columns replaced by
/// random directions: a shifted Cholesky QR pass (it cannot break down, whatever Y's
/// condition), then CholeskyQR2, the second pass also for the refilled columns.
pub fn orthonormalize(gpu: &Gpu, y: &Tensor, seed: u32) -> Result<Tensor> {
    let &[m, n] = y.shape() else { return Err(Error::shape("orthonormalize", format!("{:?} is not 2-D", y.shape()))) };
    if n == 0 || n > m {
        return Err(Error::shape("orthonormalize", format!("{m}×{n}: need 1 ≤ columns ≤ rows")));
    }
    let (q, aux) = shifted_qr_pass(gpu, y, cholqr_shift(m, n))?;
    fill_dead(gpu, &q, &aux, seed)?;
    let (q, aux) = cholesky_qr_pass(gpu, &q)?;
    fill_dead(gpu, &q, &aux, seed.wrapping_add(0x9e37_79b9))?;
    Ok(cholesky_qr_pass(gpu, &q)?.0)
}

/// Eᵀ (k×m) with E = Y[:, :k] − U[:, :k] diag(σ): Y and U are m×ld.
pub fn ritz_residual(gpu: &Gpu, y: &Tensor, u: &Tensor, sigma: &Tensor, k: usize) -> Result<Tensor> {
    let (m, ld) = (y.shape()[0], y.shape()[1]);
    if u.shape() != y.shape() || sigma.numel() < k || k > ld {
        return Err(Error::shape("ritz_residual", format!("Y {:?}, U {:?}, σ {:?}, k {k}", y.shape(), u.shape(), sigma.shape())));
    }
    let out = gpu.empty(&[k, m])?;
    run_pieces(gpu, "ritz_residual", meta(0, m, k, ld, 0, 0.0), m * k, &[whole(gpu, y)?, whole(gpu, sigma)?, whole(gpu, &out)?, whole(gpu, u)?])?;
    Ok(out)
}
