//! Orthonormalisation of a tall matrix's columns by Cholesky QR on the GPU (shaders/ortho.wgsl),
//! and the Ritz residuals the subspace iteration checks its convergence with.
//!
//! One pass: G = YᵀY (matmul), L = chol(G), Q = Y L⁻ᵀ (matmul with the triangular inverse).
//! The factorisation and the inverse are blocked in tiles of [`TILE`] columns: per tile one
//! small single-workgroup factorisation, then the panel below it and the trailing update (or
//! the inverse's block row) over as many workgroups as the matrix needs. Nothing comes back to
//! the host, whatever the block's width. Two passes (CholeskyQR2) give orthonormality to working precision
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
    /// First row and column of the tile a blocked step works on.
    block: u32,
    /// First column of a 2-D piece (`base` is its first row).
    col_base: u32,
    pad: [u32; 2],
}

fn meta(n: usize, m: usize, k: usize, ld: usize, seed: u32, tol: f32) -> Meta {
    Meta { n: n as u32, m: m as u32, k: k as u32, seed, tol, ld: ld as u32, base: 0, shift: 0.0, block: 0, col_base: 0, pad: [0; 2] }
}

/// The tile width of the blocked factorisation and inverse (`NB` in shaders/ortho.wgsl).
pub const TILE: usize = 32;

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
    let l = gpu.empty(&[n, n])?;
    super::elementwise::copy_strided(gpu, g, super::elementwise::View::dense(&[n, n]), &l, super::elementwise::View::dense(&[n, n]), &[n, n])?;
    let aux = gpu.empty(&[2 * n])?;
    let base = Meta { shift, ..meta(n, 0, 0, 0, 0, tol) };
    let binds = [whole(gpu, &l)?, whole(gpu, &aux)?];
    gpu.dispatch(ORTHO, "chol_shift", &[], bytemuck::bytes_of(&base), &binds, [1, 1, 1])?;
    let max_groups = gpu.split_limits().max_workgroups as usize;
    for jb in (0..n).step_by(TILE) {
        let tile = Meta { block: jb as u32, ..base };
        gpu.dispatch(ORTHO, "chol_diag", &[], bytemuck::bytes_of(&tile), &binds, [1, 1, 1])?;
        let rest = jb + TILE;
        if rest >= n {
            break;
        }
        for (start, len) in super::chunks(n - rest, max_groups * 64) {
            let m = Meta { base: (rest + start) as u32, ..tile };
            gpu.dispatch(ORTHO, "chol_panel", &[], bytemuck::bytes_of(&m), &binds, [groups(len, 64), 1, 1])?;
        }
        for (rows, row_len) in super::chunks(n - rest, max_groups * 16) {
            for (cols, col_len) in super::chunks(n - rest, max_groups * 16) {
                if cols >= rows + row_len {
                    break; // above the diagonal
                }
                let m = Meta { base: (rest + rows) as u32, col_base: (rest + cols) as u32, ..tile };
                gpu.dispatch(ORTHO, "chol_update", &[], bytemuck::bytes_of(&m), &binds[..1], [groups(col_len, 16), groups(row_len, 16), 1])?;
            }
        }
    }
    Ok((l, aux))
}

/// L⁻¹ of a lower-triangular factor from [`cholesky`]; dead columns get a zero diagonal.
pub fn tri_inverse(gpu: &Gpu, l: &Tensor, aux: &Tensor) -> Result<Tensor> {
    let &[n, n2] = l.shape() else { return Err(Error::shape("tri_inverse", format!("{:?} is not 2-D", l.shape()))) };
    if n != n2 || aux.numel() != 2 * n {
        return Err(Error::shape("tri_inverse", format!("L {:?} with {} flags", l.shape(), aux.numel())));
    }
    let inv = gpu.empty(&[n, n])?;
    let binds = [whole(gpu, l)?, whole(gpu, aux)?, whole(gpu, &inv)?];
    let base = meta(n, 0, 0, 0, 0, 0.0);
    let max_groups = gpu.split_limits().max_workgroups as usize;
    for (start, len) in super::chunks(n, max_groups * 64) {
        let m = Meta { base: start as u32, ..base };
        gpu.dispatch(ORTHO, "tri_diag_inv", &[], bytemuck::bytes_of(&m), &binds, [groups(len, 64), 1, 1])?;
    }
    // Block row by block row: each reads the rows above it, final by then.
    for ib in (TILE..n).step_by(TILE) {
        for (start, len) in super::chunks(ib, max_groups * 8) {
            let m = Meta { block: ib as u32, col_base: start as u32, ..base };
            gpu.dispatch(ORTHO, "tri_rows", &[], bytemuck::bytes_of(&m), &binds, [groups(len, 8), 1, 1])?;
        }
    }
    Ok(inv)
}

/// The widest Gram matrix [`chol_inverse_small`] takes (`SMALL` in shaders/ortho.wgsl): a
/// top-32 SVD's 48-column block.
pub const SMALL: usize = 48;

/// (L⁻¹, aux) of G + shift·trace(G)·I for n ≤ [`SMALL`] in one dispatch: what
/// [`cholesky_shifted`] and [`tri_inverse`] compute in eight, without L.
pub fn chol_inverse_small(gpu: &Gpu, g: &Tensor, tol: f32, shift: f32) -> Result<(Tensor, Tensor)> {
    let n = match *g.shape() {
        [n, n2] if n == n2 && (1..=SMALL).contains(&n) => n,
        _ => return Err(Error::shape("chol_inverse_small", format!("{:?} is not a square matrix of 1..={SMALL} columns", g.shape()))),
    };
    let inv = gpu.empty(&[n, n])?;
    let aux = gpu.empty(&[2 * n])?;
    let m = Meta { shift, ..meta(n, 0, 0, 0, 0, tol) };
    gpu.dispatch(ORTHO, "chol_inv_small", &[], bytemuck::bytes_of(&m), &[whole(gpu, g)?, whole(gpu, &aux)?, whole(gpu, &inv)?], [1, 1, 1])?;
    Ok((inv, aux))
}

/// One Cholesky QR pass: (Q, aux) with Q = Y L⁻ᵀ; dead columns of Q are zero.
pub fn cholesky_qr_pass(gpu: &Gpu, y: &Tensor) -> Result<(Tensor, Tensor)> {
    shifted_qr_pass(gpu, y, 0.0)
}

/// A Cholesky QR pass on YᵀY + shift·trace·I.
fn shifted_qr_pass(gpu: &Gpu, y: &Tensor, shift: f32) -> Result<(Tensor, Tensor)> {
    let n = y.shape()[1];
    let g = gemm(gpu, y, y, None, Gemm { trans_a: true, ..Gemm::default() })?;
    let (inv, aux) = if n <= SMALL {
        chol_inverse_small(gpu, &g, dead_tolerance(n), shift)?
    } else {
        let (l, aux) = cholesky_shifted(gpu, &g, dead_tolerance(n), shift)?;
        (tri_inverse(gpu, &l, &aux)?, aux)
    };
    let q = gemm(gpu, y, &inv, None, Gemm { trans_b: true, ..Gemm::default() })?;
    Ok((q, aux))
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
    Ok(cholesky_qr_pass(gpu, &span_basis(gpu, y, seed)?)?.0)
}

/// A full-rank basis of the span of Y's columns with unit-scale columns, orthonormal to
/// O(κ²ε) rather than to working precision: [`orthonormalize`] without its last pass. The
/// shifted pass cannot break down but leaves directions below its shift short (by σ/√shift);
/// the plain pass after it scales them back, so a subspace iteration that carries its block
/// through many of these (between its Rayleigh–Ritz checks, where only the span matters)
/// does not let small directions fade. Dependent columns are replaced by random directions.
pub fn span_basis(gpu: &Gpu, y: &Tensor, seed: u32) -> Result<Tensor> {
    let &[m, n] = y.shape() else { return Err(Error::shape("orthonormalize", format!("{:?} is not 2-D", y.shape()))) };
    if n == 0 || n > m {
        return Err(Error::shape("orthonormalize", format!("{m}×{n}: need 1 ≤ columns ≤ rows")));
    }
    let (q, aux) = shifted_qr_pass(gpu, y, cholqr_shift(m, n))?;
    fill_dead(gpu, &q, &aux, seed)?;
    let (q, aux) = cholesky_qr_pass(gpu, &q)?;
    fill_dead(gpu, &q, &aux, seed.wrapping_add(0x9e37_79b9))?;
    Ok(q)
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
