//! add, scale, axpy and copy with strides (shaders/elementwise.wgsl).

use super::{chunks, groups, max_elems_per_dispatch, WG};
use crate::error::{Error, Result};
use crate::gpu::{Bind, Gpu, Tensor};
use crate::shaders::ELEMENTWISE;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    n: u32,
    off: [u32; 3],
    alpha: f32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyMeta {
    shape: [u32; 4],
    src_strides: [u32; 4],
    dst_strides: [u32; 4],
    n: u32,
    src_off: u32,
    dst_off: u32,
    _pad: u32,
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// Runs a 1-D entry point over all elements of `tensors` (same length), split into pieces that
/// fit one dispatch and one binding each.
fn run_1d(gpu: &Gpu, entry: &'static str, tensors: &[&Tensor], alpha: f32) -> Result<()> {
    let n = tensors[0].numel();
    for (start, len) in chunks(n, max_elems_per_dispatch(gpu, WG)) {
        let mut meta = Meta { n: len as u32, off: [0; 3], alpha, _pad: [0; 3] };
        let mut binds = Vec::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let (bind, residual) = t.bind(gpu, start, len)?;
            meta.off[i] = residual;
            binds.push(bind);
        }
        gpu.dispatch(ELEMENTWISE, entry, &[], bytemuck::bytes_of(&meta), &binds, [groups(len, WG), 1, 1])?;
    }
    Ok(())
}

/// x + y.
pub fn add(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("add", x, y)?;
    let out = gpu.empty(x.shape())?;
    run_1d(gpu, "add", &[x, y, &out], 0.0)?;
    Ok(out)
}

/// alpha * x.
pub fn scale(gpu: &Gpu, x: &Tensor, alpha: f32) -> Result<Tensor> {
    let out = gpu.empty(x.shape())?;
    run_1d(gpu, "scale", &[x, &out], alpha)?;
    Ok(out)
}

/// y <- alpha * x + y, in place.
pub fn axpy(gpu: &Gpu, alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("axpy", x, y)?;
    run_1d(gpu, "axpy", &[x, y], alpha)
}

/// A strided view of a tensor's elements: element (i0..i3) is at offset + sum(i_d * strides_d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub offset: usize,
    pub strides: [usize; 4],
}

impl View {
    /// The row-major layout of a dense tensor of `shape` (up to 4 dims).
    pub fn dense(shape: &[usize]) -> View {
        let dims = pad4(shape);
        let mut strides = [0usize; 4];
        let mut s = 1;
        for d in (0..4).rev() {
            strides[d] = s;
            s *= dims[d];
        }
        View { offset: 0, strides }
    }

    fn span(&self, shape: &[usize; 4]) -> (usize, usize) {
        let last: usize = (0..4).map(|d| (shape[d] - 1) * self.strides[d]).sum();
        (self.offset, last + 1)
    }
}

/// `shape` with leading 1s to 4 dims.
pub fn pad4(shape: &[usize]) -> [usize; 4] {
    let mut dims = [1usize; 4];
    dims[4 - shape.len()..].copy_from_slice(shape);
    dims
}

/// Copies the elements of `shape` (up to 4 dims) from a strided view of `src` into a strided
/// view of `dst`. Transposes and slices are copies with strides.
pub fn copy_strided(gpu: &Gpu, src: &Tensor, src_view: View, dst: &Tensor, dst_view: View, shape: &[usize]) -> Result<()> {
    match copy_dims(src, src_view, dst, dst_view, shape)? {
        Some(dims) => copy_split(gpu, src, src_view, dst, dst_view, dims),
        None => Ok(()),
    }
}

/// The copy's 4-D index space, once both views are checked to stay inside their tensors; None
/// when it is empty.
fn copy_dims(src: &Tensor, src_view: View, dst: &Tensor, dst_view: View, shape: &[usize]) -> Result<Option<[usize; 4]>> {
    if shape.len() > 4 {
        return Err(Error::shape("copy_strided", format!("{shape:?} has more than 4 dims")));
    }
    let dims = pad4(shape);
    if dims.contains(&0) {
        return Ok(None);
    }
    for (name, t, v) in [("source", src, src_view), ("destination", dst, dst_view)] {
        let (start, len) = v.span(&dims);
        if start + len > t.numel() {
            return Err(Error::shape(
                "copy_strided",
                format!("the {name} view {v:?} over {shape:?} reaches element {} of a {:?} tensor", start + len - 1, t.shape()),
            ));
        }
    }
    Ok(Some(dims))
}

impl CopyMeta {
    fn new(dims: [usize; 4], sv: View, dv: View, src_off: u32, dst_off: u32) -> CopyMeta {
        CopyMeta {
            shape: dims.map(|d| d as u32),
            src_strides: sv.strides.map(|s| s as u32),
            dst_strides: dv.strides.map(|s| s as u32),
            n: dims.iter().product::<usize>() as u32,
            src_off,
            dst_off,
            _pad: 0,
        }
    }
}

/// Two copies of the same shape and views in one dispatch: `srcs[0]` → `dsts[0]` and `srcs[1]`
/// → `dsts[1]` (a layer's new keys and values into their caches). Where the four tensors do not
/// each fit one binding with the same offsets, or 2·n threads do not fit one dispatch, two
/// `copy_strided` calls do it.
pub fn copy_strided_pair(gpu: &Gpu, srcs: [&Tensor; 2], src_view: View, dsts: [&Tensor; 2], dst_view: View, shape: &[usize]) -> Result<()> {
    let fallback = |gpu: &Gpu| -> Result<()> {
        copy_strided(gpu, srcs[0], src_view, dsts[0], dst_view, shape)?;
        copy_strided(gpu, srcs[1], src_view, dsts[1], dst_view, shape)
    };
    if srcs[0].numel() != srcs[1].numel() || dsts[0].numel() != dsts[1].numel() {
        return fallback(gpu);
    }
    // The second pair has the first's sizes, so the first's check covers both.
    let Some(dims) = copy_dims(srcs[0], src_view, dsts[0], dst_view, shape)? else {
        return Ok(());
    };
    let n: usize = dims.iter().product();
    let max = Tensor::max_binding_elems(gpu);
    let whole = srcs.iter().chain(&dsts).all(|t| t.numel() <= max);
    if !whole || 2 * n > max_elems_per_dispatch(gpu, WG) {
        return fallback(gpu);
    }
    let meta = CopyMeta::new(dims, src_view, dst_view, src_view.span(&dims).0 as u32, dst_view.span(&dims).0 as u32);
    let mut binds = Vec::with_capacity(4);
    for t in srcs.into_iter().chain(dsts) {
        // The paired kernel has one offset per side: a tensor that starts inside its binding
        // (a view off the alignment) takes the two separate copies, which have one each.
        match t.bind(gpu, 0, t.numel())? {
            (b, 0) => binds.push(b),
            _ => return fallback(gpu),
        }
    }
    gpu.dispatch(ELEMENTWISE, "copy_strided_pair", &[], bytemuck::bytes_of(&meta), &binds, [groups(2 * n, WG), 1, 1])
}

/// Binds `len` elements from `start`: the whole tensor where it fits one binding, so that the
/// binding does not move with the view (a decoding step's write into the KV cache then reuses
/// the last step's bind group instead of creating one per layer and token), else the range.
fn bind_steady<'a>(gpu: &Gpu, t: &'a Tensor, start: usize, len: usize) -> Result<(Bind<'a>, u32)> {
    if t.numel() <= Tensor::max_binding_elems(gpu) {
        let (b, off) = t.bind(gpu, 0, t.numel())?;
        return Ok((b, off + start as u32));
    }
    t.bind(gpu, start, len)
}

/// Halves the outermost non-unit dimension until each piece fits one dispatch and one binding.
fn copy_split(gpu: &Gpu, src: &Tensor, sv: View, dst: &Tensor, dv: View, dims: [usize; 4]) -> Result<()> {
    let n: usize = dims.iter().product();
    let (s_start, s_len) = sv.span(&dims);
    let (d_start, d_len) = dv.span(&dims);
    let max = Tensor::max_binding_elems(gpu);
    let fits = n <= max_elems_per_dispatch(gpu, WG) && s_len <= max && d_len <= max;
    if fits {
        let (sb, s_res) = bind_steady(gpu, src, s_start, s_len)?;
        let (db, d_res) = bind_steady(gpu, dst, d_start, d_len)?;
        let meta = CopyMeta::new(dims, sv, dv, s_res, d_res);
        return gpu.dispatch(ELEMENTWISE, "copy_strided", &[], bytemuck::bytes_of(&meta), &[sb, db], [groups(n, WG), 1, 1]);
    }
    let Some(d) = (0..4).find(|&d| dims[d] > 1) else {
        return Err(Error::TooLarge { op: "copy_strided", detail: "a single element does not fit a binding".into() });
    };
    let half = dims[d] / 2;
    for (start, len) in [(0, half), (half, dims[d] - half)] {
        let mut part = dims;
        part[d] = len;
        let sv2 = View { offset: sv.offset + start * sv.strides[d], ..sv };
        let dv2 = View { offset: dv.offset + start * dv.strides[d], ..dv };
        copy_split(gpu, src, sv2, dst, dv2, part)?;
    }
    Ok(())
}

/// The transpose of a 2-D tensor, as a new dense tensor.
pub fn transpose(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let &[rows, cols] = x.shape() else {
        return Err(Error::shape("transpose", format!("{:?} is not 2-D", x.shape())));
    };
    let out = gpu.empty(&[cols, rows])?;
    // Walk the output densely; read the input with swapped strides.
    let src_view = View { offset: 0, strides: [0, 0, 1, cols] };
    copy_strided(gpu, x, src_view, &out, View::dense(&[cols, rows]), &[cols, rows])?;
    Ok(out)
}
