//! Rotary position embedding (shaders/rope.wgsl).

use super::{chunks, groups, WG};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::RopeStyle;
use crate::shaders::ROPE;

/// The largest head dimension: the uniform holds D/2 frequencies.
pub const MAX_HEAD_DIM: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    pairs: u32,
    half: u32,
    heads: u32,
    seq: u32,
    row0: u32,
    pos0: u32,
    in_off: u32,
    out_off: u32,
    adjacent: u32,
    inverse: u32,
    _pad: [u32; 2],
    inv_freq: [f32; MAX_HEAD_DIM / 2],
}

/// Rotates x: [B, T, H, D] into a new tensor; token t is at position pos0 + t and frequency i
/// is theta^(−2i/D). Angles are f32 products pos · inv_freq (see shaders/rope.wgsl).
pub fn rope(gpu: &Gpu, x: &Tensor, pos0: usize, theta: f32, style: RopeStyle) -> Result<Tensor> {
    rotate(gpu, "rope", "x", x, pos0, theta, style)
}

/// The gradient of `rope` w.r.t. its input: dy: [B, T, H, D] rotated by the negated angles
/// (the rotation's transpose), same layout and pairing.
pub fn rope_bwd(gpu: &Gpu, dy: &Tensor, pos0: usize, theta: f32, style: RopeStyle) -> Result<Tensor> {
    rotate(gpu, "rope_bwd", "dy", dy, pos0, theta, style)
}

fn rotate(gpu: &Gpu, op: &'static str, name: &str, x: &Tensor, pos0: usize, theta: f32, style: RopeStyle) -> Result<Tensor> {
    let &[_, t, h, d] = x.shape() else {
        return Err(Error::shape(op, format!("{name} {:?} is not [B, T, H, D]", x.shape())));
    };
    if d % 2 != 0 || d > MAX_HEAD_DIM {
        return Err(Error::shape(op, format!("{name}: head dimension {d} must be even and at most {MAX_HEAD_DIM}")));
    }
    let out = gpu.empty(x.shape())?;
    if x.numel() == 0 {
        return Ok(out);
    }
    if pos0 + t > 1 << 24 {
        return Err(Error::shape(op, format!("position {} is past the 2^24 an f32 holds exactly", pos0 + t - 1)));
    }
    let half = d / 2;
    let mut meta = Meta {
        pairs: 0,
        half: half as u32,
        heads: h as u32,
        seq: t as u32,
        row0: 0,
        pos0: pos0 as u32,
        in_off: 0,
        out_off: 0,
        adjacent: (style == RopeStyle::Adjacent) as u32,
        inverse: (op == "rope_bwd") as u32,
        _pad: [0; 2],
        inv_freq: [0.0; MAX_HEAD_DIM / 2],
    };
    for (i, f) in meta.inv_freq[..half].iter_mut().enumerate() {
        *f = (theta as f64).powf(-2.0 * i as f64 / d as f64) as f32;
    }
    let rows = x.numel() / d;
    let max_elems = Tensor::max_binding_elems(gpu);
    if d > max_elems {
        return Err(Error::TooLarge { op, detail: format!("a head of {d} values is larger than one binding") });
    }
    let by_groups = gpu.split_limits().max_workgroups as usize * WG / half;
    let rows_per = (max_elems / d).min(by_groups).max(1);
    for (r0, r) in chunks(rows, rows_per) {
        let (xb, in_off) = x.bind(gpu, r0 * d, r * d)?;
        let (ob, out_off) = out.bind(gpu, r0 * d, r * d)?;
        let pairs = r * half;
        meta = Meta { pairs: pairs as u32, row0: r0 as u32, in_off, out_off, ..meta };
        gpu.dispatch(ROPE, "rope", &[], bytemuck::bytes_of(&meta), &[xb, ob], [groups(pairs, WG), 1, 1])?;
    }
    Ok(out)
}
