//! Row softmax (shaders/softmax.wgsl).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::SOFTMAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    in_off: u32,
    out_off: u32,
}

/// Softmax over the last dimension of a tensor of any rank.
pub fn softmax_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::shape("softmax_rows", "a 0-D tensor has no rows"));
    };
    if cols == 0 {
        return Ok(gpu.empty(x.shape())?);
    }
    let rows = x.numel() / cols;
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge {
            op: "softmax_rows",
            detail: format!("a row of {cols} values is larger than one binding ({max_elems} values)"),
        });
    }
    let rows_per = (max_elems / cols).min(gpu.split_limits().max_workgroups as usize).max(1);
    let out = gpu.empty(x.shape())?;
    for (r0, r) in super::chunks(rows, rows_per) {
        let (xb, in_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (ob, out_off) = out.bind(gpu, r0 * cols, r * cols)?;
        let meta = Meta { rows: r as u32, cols: cols as u32, in_off, out_off };
        gpu.dispatch(SOFTMAX, "softmax_rows", &[], bytemuck::bytes_of(&meta), &[xb, ob], [r as u32, 1, 1])?;
    }
    Ok(out)
}
