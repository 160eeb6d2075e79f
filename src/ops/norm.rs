//! RMSNorm and LayerNorm over the last dimension (shaders/norm.wgsl).

use super::chunks;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::NORM;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    x_off: u32,
    out_off: u32,
    eps: f32,
    /// dy's offset in the backward entries, the matrix's in rms_norm_matvec.
    dy_off: u32,
    n_out: u32,
    /// Backward entries: 1 adds dx to the output tensor's values.
    accumulate: u32,
}

/// The shader's threads per row (its override `WG`).
fn threads(gpu: &Gpu) -> [(&'static str, f64); 1] {
    [("WG", gpu.row_threads() as f64)]
}

/// x / sqrt(mean(x²) + eps) * w over the last dimension; x of any rank, w of shape [d].
pub fn rms_norm(gpu: &Gpu, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    run(gpu, "rms_norm", x, w, None, None, eps, None)
}

/// (x − mean) / sqrt(var + eps) * w + b over the last dimension (biased variance); x of any
/// rank, w and b of shape [d].
pub fn layer_norm(gpu: &Gpu, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    run(gpu, "layer_norm", x, w, Some(b), None, eps, None)
}

/// rms_norm(x, w, eps) · mᵀ for x [rows, d] and m [n, d], without storing the normalised rows:
/// [rows, n]. One workgroup per output: meant for the few rows of a decoded token, where the
/// separate norm would be a dispatch of its own.
pub fn rms_norm_matvec(gpu: &Gpu, x: &Tensor, w: &Tensor, m: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm_matvec";
    let (&[rows, cols], &[n, m_cols]) = (x.shape(), m.shape()) else {
        return Err(Error::shape(OP, format!("x {:?} and the matrix {:?} must both be 2-D", x.shape(), m.shape())));
    };
    if m_cols != cols || w.shape() != [cols] {
        return Err(Error::shape(OP, format!("x {:?}, weight {:?} and matrix {:?} do not agree", x.shape(), w.shape(), m.shape())));
    }
    let out = gpu.empty(&[rows, n])?;
    if rows == 0 || n == 0 || cols == 0 {
        return Ok(out);
    }
    let pieces = super::matvec_pieces(gpu, OP, rows, cols, n, cols)?;
    let (xb, x_off) = x.bind(gpu, 0, rows * cols)?;
    let wb = super::whole(gpu, w)?;
    let (ob, out_base) = out.bind(gpu, 0, rows * n)?;
    for (n0, nn) in pieces {
        let (mb, m_off) = m.bind(gpu, n0 * cols, nn * cols)?;
        let meta = Meta { rows: rows as u32, cols: cols as u32, x_off, out_off: out_base + n0 as u32, eps, dy_off: m_off, n_out: n as u32, accumulate: 0 };
        gpu.dispatch(NORM, OP, &threads(gpu), bytemuck::bytes_of(&meta), &[xb, wb, mb, ob], [nn as u32, rows as u32, 1])?;
    }
    Ok(out)
}

/// dx of `rms_norm` given the upstream gradient dy (same shape as x).
pub fn rms_norm_bwd(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32) -> Result<Tensor> {
    backward(gpu, "rms_norm_bwd", x, w, dy, eps, None)
}

/// dx of `layer_norm` given the upstream gradient dy (same shape as x); the bias does not
/// enter dx.
pub fn layer_norm_bwd(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32) -> Result<Tensor> {
    backward(gpu, "layer_norm_bwd", x, w, dy, eps, None)
}

/// acc += dx of `rms_norm` (a residual path's gradient plus the norm's): one dispatch where
/// `rms_norm_bwd` and an add would be two, with the add's rounding.
pub fn rms_norm_bwd_into(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32, acc: &Tensor) -> Result<()> {
    backward(gpu, "rms_norm_bwd", x, w, dy, eps, Some(acc)).map(drop)
}

/// acc += dx of `layer_norm`, as `rms_norm_bwd_into`.
pub fn layer_norm_bwd_into(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32, acc: &Tensor) -> Result<()> {
    backward(gpu, "layer_norm_bwd", x, w, dy, eps, Some(acc)).map(drop)
}

/// A model's norm: RMSNorm (Llama) or LayerNorm (GPT-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

/// dx of the `kind` norm for dy: a new tensor, or added into `acc` (and returned) where given.
pub fn norm_bwd(gpu: &Gpu, kind: NormKind, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32, acc: Option<&Tensor>) -> Result<Tensor> {
    let op = match kind {
        NormKind::Rms => "rms_norm_bwd",
        NormKind::Layer => "layer_norm_bwd",
    };
    backward(gpu, op, x, w, dy, eps, acc)
}

fn backward(gpu: &Gpu, op: &'static str, x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32, acc: Option<&Tensor>) -> Result<Tensor> {
    if dy.shape() != x.shape() {
        return Err(Error::shape(op, format!("dy {:?} does not match x {:?}", dy.shape(), x.shape())));
    }
    if let Some(acc) = acc {
        if acc.shape() != x.shape() {
            return Err(Error::shape(op, format!("the gradient to add into {:?} does not match x {:?}", acc.shape(), x.shape())));
        }
        if acc.shares_buffer(x) || acc.shares_buffer(dy) || acc.shares_buffer(w) {
            return Err(Error::shape(op, "the gradient to add into shares a buffer with x, w or dy, which the kernel reads while it writes"));
        }
    }
    run(gpu, op, x, w, None, Some(dy), eps, acc)
}

/// One entry point over all rows: `b` (layer_norm's bias) is bound whole like w, `dy` (the
/// backward entries') row by row like x; both sit at binding 3, so at most one is given. The
/// result goes to a new tensor, or is added to `acc` (backward entries).
#[allow(clippy::too_many_arguments)]
fn run(gpu: &Gpu, op: &'static str, x: &Tensor, w: &Tensor, b: Option<&Tensor>, dy: Option<&Tensor>, eps: f32, acc: Option<&Tensor>) -> Result<Tensor> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::shape(op, "a 0-D tensor has no rows"));
    };
    for (name, t) in [("weight", Some(w)), ("bias", b)] {
        if let Some(t) = t {
            if t.shape() != [cols] {
                return Err(Error::shape(op, format!("{name} {:?} does not match x {:?}: expected [{cols}]", t.shape(), x.shape())));
            }
        }
    }
    let out = match acc {
        Some(acc) => acc.clone(),
        None => gpu.empty(x.shape())?,
    };
    if cols == 0 || x.numel() == 0 {
        return Ok(out);
    }
    let rows = x.numel() / cols;
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge { op, detail: format!("a row of {cols} values is larger than one binding ({max_elems} values)") });
    }
    let rows_per = (max_elems / cols).min(gpu.split_limits().max_workgroups as usize).max(1);
    let wb = super::whole(gpu, w)?;
    let bb = b.map(|b| b.bind(gpu, 0, cols)).transpose()?;
    for (r0, r) in chunks(rows, rows_per) {
        let (xb, x_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (ob, out_off) = out.bind(gpu, r0 * cols, r * cols)?;
        let mut meta = Meta { rows: r as u32, cols: cols as u32, x_off, out_off, eps, dy_off: 0, n_out: 0, accumulate: acc.is_some() as u32 };
        let binds = match (bb, dy) {
            (Some((bb, _)), _) => vec![xb, wb, bb, ob],
            (None, Some(dy)) => {
                let (db, dy_off) = dy.bind(gpu, r0 * cols, r * cols)?;
                meta.dy_off = dy_off;
                vec![xb, wb, db, ob]
            }
            (None, None) => vec![xb, wb, ob],
        };
        gpu.dispatch(NORM, op, &threads(gpu), bytemuck::bytes_of(&meta), &binds, [r as u32, 1, 1])?;
    }
    Ok(out)
}
