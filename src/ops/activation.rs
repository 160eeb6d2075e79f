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
    z_off: u32,
    out2_off: u32,
    n_out: u32,
    accumulate: u32,
    _pad: [u32; 2],
}

impl Meta {
    fn elementwise(n: usize, x_off: u32, y_off: u32, out_off: u32) -> Meta {
        Meta { n: n as u32, x_off, y_off, out_off, cols: 1, col0: 0, z_off: 0, out2_off: 0, n_out: 0, accumulate: 0, _pad: [0; 2] }
    }
}

/// Runs an entry point over all elements of `x`, in pieces that fit one dispatch and one
/// binding. `y` is bound over the same range as `x`, or whole when `bias_cols` is set.
fn run_1d(gpu: &Gpu, entry: &'static str, x: &Tensor, y: Option<&Tensor>, out: &Tensor, bias_cols: Option<usize>) -> Result<()> {
    let bias = match (y, bias_cols) {
        (Some(b), Some(_)) => Some(super::whole(gpu, b)?),
        _ => None,
    };
    let cols = bias_cols.unwrap_or(1);
    for (start, len) in chunks(x.numel(), max_elems_per_dispatch(gpu, WG)) {
        let (xb, x_off) = x.bind(gpu, start, len)?;
        let (ob, out_off) = out.bind(gpu, start, len)?;
        let mut meta = Meta { cols: cols as u32, col0: (start % cols) as u32, ..Meta::elementwise(len, x_off, 0, out_off) };
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

/// `silu_mul` of the two halves of each row of `gate_up` [.., 2·F] (gate first): [.., F]. One
/// product with the gate and up weights stacked, then this, is one dispatch fewer than two
/// products and `silu_mul`, with the same arithmetic per element.
pub fn silu_mul_halves(gpu: &Gpu, gate_up: &Tensor) -> Result<Tensor> {
    let (cols, outer) = halves("silu_mul_halves", gate_up)?;
    let out = gpu.empty(&[outer, &[cols]].concat())?;
    run_halves(gpu, "silu_mul_halves", gate_up, cols, &[(&out, cols)])?;
    Ok(out)
}

/// gate_up's [.., 2·F] checked: F and the leading dimensions.
fn halves<'t>(op: &'static str, gate_up: &'t Tensor) -> Result<(usize, &'t [usize])> {
    match gate_up.shape().split_last() {
        Some((&both, outer)) if both % 2 == 0 => Ok((both / 2, outer)),
        _ => Err(Error::shape(op, format!("gate_up {:?} has no last dimension of even size", gate_up.shape()))),
    }
}

/// Runs `entry` over gate_up [rows, 2·F] (bound as both x and y) in pieces of whole rows, so
/// that a piece's gate and up halves lie in its binding; `rest` (z, then out; each with its
/// row width) is bound over the same rows.
fn run_halves(gpu: &Gpu, entry: &'static str, gate_up: &Tensor, cols: usize, rest: &[(&Tensor, usize)]) -> Result<()> {
    let both = 2 * cols;
    let rows = gate_up.numel() / both.max(1);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let rows_per = (max_elems_per_dispatch(gpu, WG) / cols).min(Tensor::max_binding_elems(gpu) / both).max(1);
    for (r0, r) in chunks(rows, rows_per) {
        let (xb, x_off) = gate_up.bind(gpu, r0 * both, r * both)?;
        let (yb, y_off) = gate_up.bind(gpu, r0 * both, r * both)?;
        let mut binds = vec![xb, yb];
        let mut offs = vec![];
        for (t, width) in rest {
            let (b, off) = t.bind(gpu, r0 * width, r * width)?;
            binds.push(b);
            offs.push(off);
        }
        let z_off = if offs.len() > 1 { offs[0] } else { 0 };
        let meta = Meta { cols: cols as u32, z_off, ..Meta::elementwise(r * cols, x_off, y_off, offs.last().copied().unwrap_or(0)) };
        gpu.dispatch(ACTIVATION, entry, &[], bytemuck::bytes_of(&meta), &binds, [groups(r * cols, WG), 1, 1])?;
    }
    Ok(())
}

/// `silu_mul_halves(gate_up)` · mᵀ for gate_up [rows, 2·F] and m [n, F], without storing the
/// activation: [rows, n]. With `residual` ([rows, n], held nowhere else), the product is added
/// to it in place and it is returned (the residual stream after the MLP). One workgroup per
/// output: meant for the few rows of a decoded token, where the activation would be a
/// dispatch of its own; more rows than one dispatch's workgroups are refused, not split.
pub fn silu_mul_matvec(gpu: &Gpu, gate_up: &Tensor, m: &Tensor, residual: Option<Tensor>) -> Result<Tensor> {
    const OP: &str = "silu_mul_matvec";
    let (&[rows, both], &[n, cols]) = (gate_up.shape(), m.shape()) else {
        return Err(Error::shape(OP, format!("gate_up {:?} and the matrix {:?} must both be 2-D", gate_up.shape(), m.shape())));
    };
    if both != 2 * cols {
        return Err(Error::shape(OP, format!("gate_up {:?} is not two halves of the matrix's {cols} columns", gate_up.shape())));
    }
    let accumulate = residual.is_some();
    let out = match residual {
        Some(r) if r.shape() != [rows, n] => return Err(Error::shape(OP, format!("the residual {:?} is not [{rows}, {n}]", r.shape()))),
        Some(r) if !r.is_unique() => return Err(Error::shape(OP, "the residual is held elsewhere too: adding in place would change it there")),
        Some(r) => r,
        None => gpu.empty(&[rows, n])?,
    };
    if rows == 0 || n == 0 {
        return Ok(out);
    }
    let pieces = super::matvec_pieces(gpu, OP, rows, both, n, cols)?;
    let (xb, x_off) = gate_up.bind(gpu, 0, rows * both)?;
    let (ob, out_base) = out.bind(gpu, 0, rows * n)?;
    for (n0, nn) in pieces {
        let (mb, m_off) = m.bind(gpu, n0 * cols, nn * cols)?;
        let meta = Meta { cols: cols as u32, n_out: n as u32, accumulate: accumulate as u32, ..Meta::elementwise(0, x_off, m_off, out_base + n0 as u32) };
        gpu.dispatch(ACTIVATION, OP, &[], bytemuck::bytes_of(&meta), &[xb, mb, ob], [nn as u32, rows as u32, 1])?;
    }
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

/// Runs a backward entry over all elements: `ins` (x, y[, z]) and `outs` (out[, out2]) are all
/// bound over the same element range.
fn run_bwd(gpu: &Gpu, entry: &'static str, ins: &[&Tensor], outs: &[&Tensor]) -> Result<()> {
    for (start, len) in chunks(ins[0].numel(), max_elems_per_dispatch(gpu, WG)) {
        let mut binds = vec![];
        let mut offs = [0u32; 5];
        for (i, t) in ins.iter().chain(outs).enumerate() {
            let (b, off) = t.bind(gpu, start, len)?;
            binds.push(b);
            offs[i] = off;
        }
        let (z_off, out_i) = if ins.len() == 3 { (offs[2], 3) } else { (0, 2) };
        let meta = Meta { z_off, out2_off: offs.get(out_i + 1).copied().unwrap_or(0), ..Meta::elementwise(len, offs[0], offs[1], offs[out_i]) };
        gpu.dispatch(ACTIVATION, entry, &[], bytemuck::bytes_of(&meta), &binds, [groups(len, WG), 1, 1])?;
    }
    Ok(())
}

fn same_shape(op: &'static str, a: (&str, &Tensor), b: (&str, &Tensor)) -> Result<()> {
    if a.1.shape() != b.1.shape() {
        return Err(Error::shape(op, format!("{} {:?} does not match {} {:?}", b.0, b.1.shape(), a.0, a.1.shape())));
    }
    Ok(())
}

/// Gradients of y = silu(gate) · up: returns (d_gate, d_up) for the upstream gradient dy.
pub fn silu_mul_bwd(gpu: &Gpu, gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "silu_mul_bwd";
    same_shape(OP, ("gate", gate), ("up", up))?;
    same_shape(OP, ("gate", gate), ("dy", dy))?;
    let (dg, du) = (gpu.empty(gate.shape())?, gpu.empty(gate.shape())?);
    run_bwd(gpu, OP, &[gate, up, dy], &[&dg, &du])?;
    Ok((dg, du))
}

/// Gradients of `silu_mul_halves(gate_up)` for the upstream gradient dy [.., F]: d(gate_up)
/// [.., 2·F], d_gate and d_up the two halves of each row as gate and up are in gate_up, so
/// that one product with the stacked weights gives the gradient at the MLP's input. The same
/// arithmetic per element as `silu_mul_bwd`.
pub fn silu_mul_bwd_halves(gpu: &Gpu, gate_up: &Tensor, dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul_bwd_halves";
    let (cols, outer) = halves(OP, gate_up)?;
    if dy.shape() != [outer, &[cols]].concat() {
        return Err(Error::shape(OP, format!("dy {:?} is not gate_up {:?} with half its last dimension", dy.shape(), gate_up.shape())));
    }
    let out = gpu.empty(gate_up.shape())?;
    run_halves(gpu, OP, gate_up, cols, &[(dy, cols), (&out, 2 * cols)])?;
    Ok(out)
}

/// dx of `gelu` (the tanh form) for the upstream gradient dy.
pub fn gelu_bwd(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("gelu_bwd", ("x", x), ("dy", dy))?;
    let dx = gpu.empty(x.shape())?;
    run_bwd(gpu, "gelu_bwd", &[x, dy], &[&dx])?;
    Ok(dx)
}
