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
    dy_off: u32,
    _pad: [u32; 3],
}

/// Softmax over the last dimension of a tensor of any rank.
pub fn softmax_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    run(gpu, "softmax_rows", x, None)
}

/// dx of `softmax_rows` given its output y and the upstream gradient dy: y (dy − Σ y dy).
pub fn softmax_bwd(gpu: &Gpu, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if dy.shape() != y.shape() {
        return Err(Error::shape("softmax_bwd", format!("dy {:?} does not match y {:?}", dy.shape(), y.shape())));
    }
    run(gpu, "softmax_bwd", y, Some(dy))
}

fn run(gpu: &Gpu, op: &'static str, x: &Tensor, dy: Option<&Tensor>) -> Result<Tensor> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::shape(op, "a 0-D tensor has no rows"));
    };
    if cols == 0 {
        return gpu.empty(x.shape());
    }
    let rows = x.numel() / cols;
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge {
            op,
            detail: format!("a row of {cols} values is larger than one binding ({max_elems} values)"),
        });
    }
    let rows_per = (max_elems / cols).min(gpu.split_limits().max_workgroups as usize).max(1);
    let out = gpu.empty(x.shape())?;
    for (r0, r) in super::chunks(rows, rows_per) {
        let (xb, in_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (ob, out_off) = out.bind(gpu, r0 * cols, r * cols)?;
        let mut meta = Meta { rows: r as u32, cols: cols as u32, in_off, out_off, dy_off: 0, _pad: [0; 3] };
        let binds = match dy {
            Some(dy) => {
                let (db, dy_off) = dy.bind(gpu, r0 * cols, r * cols)?;
                meta.dy_off = dy_off;
                vec![xb, db, ob]
            }
            None => vec![xb, ob],
        };
        gpu.dispatch(SOFTMAX, op, &[], bytemuck::bytes_of(&meta), &binds, [r as u32, 1, 1])?;
    }
    Ok(out)
}
