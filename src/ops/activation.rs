//! MLP activations: SwiGLU's silu(gate) * up, GPT-2's tanh GELU, row-broadcast bias
//! (shaders/activation.wgsl).

use super::{chunks, groups, max_elems_per_dispatch, WG};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::ACTIVATION;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    n: u32,
    x_off: u32,
    y_off: u32,
    out_off: u32,
    cols: u32,
    col0: u32,
    _pad: [u32; 2],
}

/// Runs an entry point over all elements of `x`, in pieces that fit one dispatch and one
/// binding. `y` is bound over the same range as `x`, or whole when `bias_cols` is set.
fn run_1d(gpu: &Gpu, entry: &'static str, x: &Tensor, y: Option<&Tensor>, out: &Tensor, bias_cols: Option<usize>) -> Result<()> {
    let bias = match (y, bias_cols) {
        (Some(b), Some(cols)) => Some(b.bind(gpu, 0, cols)?.0),
        _ => None,
    };
    let cols = bias_cols.unwrap_or(1);
    for (start, len) in chunks(x.numel(), max_elems_per_dispatch(gpu, WG)) {
        let (xb, x_off) = x.bind(gpu, start, len)?;
        let (ob, out_off) = out.bind(gpu, start, len)?;
        let mut meta = Meta { n: len as u32, x_off, y_off: 0, out_off, cols: cols as u32, col0: (start % cols) as u32, _pad: [0; 2] };
        let binds = match (y, bias) {
            (_, Some(bb)) => vec![xb, bb, ob],
            (Some(y), None) => {
                let (yb, y_off) = y.bind(gpu, start, len)?;
                meta.y_off = y_off;
                vec![xb, yb, ob]
            }
            (None, None) => vec![xb, ob],
        };
        gpu.dispatch(ACTIVATION, entry, &[], bytemuck::bytes_of(&meta), &binds, [groups(len, WG), 1, 1])?;
    }
    Ok(())
}

/// gate · sigmoid(gate) · up, elementwise (SwiGLU).
pub fn silu_mul(gpu: &Gpu, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::shape("silu_mul", format!("gate {:?} vs up {:?}", gate.shape(), up.shape())));
    }
    let out = gpu.empty(gate.shape())?;
    run_1d(gpu, "silu_mul", gate, Some(up), &out, None)?;
    Ok(out)
}

/// GPT-2's GELU ("gelu_new"): 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), elementwise.
pub fn gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let out = gpu.empty(x.shape())?;
    run_1d(gpu, "gelu", x, None, &out, None)?;
    Ok(out)
}

/// x + b broadcast over rows: x of any rank with last dimension C, b of shape [C].
pub fn add_bias(gpu: &Gpu, x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let cols = x.shape().last().copied().unwrap_or(1);
    if b.shape() != [cols] {
        return Err(Error::shape("add_bias", format!("bias {:?} does not match x {:?}: expected [{cols}]", b.shape(), x.shape())));
    }
    let out = gpu.empty(x.shape())?;
    if x.numel() == 0 {
        return Ok(out);
    }
    if cols > Tensor::max_binding_elems(gpu) {
        return Err(Error::TooLarge { op: "add_bias", detail: format!("a bias of {cols} values is larger than one binding") });
    }
    run_1d(gpu, "add_bias", x, Some(b), &out, Some(cols))?;
    Ok(out)
}
