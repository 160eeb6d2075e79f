//! Row log-softmax and its backward (shaders/loss.wgsl): the pieces of cross-entropy and KL
//! gradients. Cross-entropy's dlogits is log_softmax_bwd(logp, −onehot); KL(p_orig ‖ p)'s is
//! log_softmax_bwd(logp, −p_orig).

use super::chunks;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::LOSS;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    a_off: u32,
    b_off: u32,
    out_off: u32,
    _pad: [u32; 3],
}

/// log softmax over the last dimension of a tensor of any rank (max-subtracted).
pub fn log_softmax_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    run_rows(gpu, "log_softmax_rows", x, None)
}

/// dx of `log_softmax_rows` given its output logp and the upstream gradient dlogp:
/// dx = dlogp − softmax · rowsum(dlogp).
pub fn log_softmax_bwd(gpu: &Gpu, logp: &Tensor, dlogp: &Tensor) -> Result<Tensor> {
    if dlogp.shape() != logp.shape() {
        return Err(Error::shape("log_softmax_bwd", format!("dlogp {:?} does not match logp {:?}", dlogp.shape(), logp.shape())));
    }
    run_rows(gpu, "log_softmax_bwd", logp, Some(dlogp))
}

/// One workgroup per row, rows split into dispatches that fit the workgroup and binding
/// limits; `b`, when given, is bound like `a`.
fn run_rows(gpu: &Gpu, op: &'static str, a: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let Some(&cols) = a.shape().last() else {
        return Err(Error::shape(op, "a 0-D tensor has no rows"));
    };
    let out = gpu.empty(a.shape())?;
    if cols == 0 || a.numel() == 0 {
        return Ok(out);
    }
    let rows = a.numel() / cols;
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge { op, detail: format!("a row of {cols} values is larger than one binding ({max_elems} values)") });
    }
    let rows_per = (max_elems / cols).min(gpu.split_limits().max_workgroups as usize).max(1);
    for (r0, r) in chunks(rows, rows_per) {
        let (ab, a_off) = a.bind(gpu, r0 * cols, r * cols)?;
        let (ob, out_off) = out.bind(gpu, r0 * cols, r * cols)?;
        let mut meta = Meta { rows: r as u32, cols: cols as u32, a_off, b_off: 0, out_off, _pad: [0; 3] };
        let binds = match b {
            Some(b) => {
                let (bb, b_off) = b.bind(gpu, r0 * cols, r * cols)?;
                meta.b_off = b_off;
                vec![ab, bb, ob]
            }
            None => vec![ab, ob],
        };
        gpu.dispatch(LOSS, op, &[], bytemuck::bytes_of(&meta), &binds, [r as u32, 1, 1])?;
    }
    Ok(out)
}
