//! Row and whole-tensor reductions: sum, max, sum of squares (shaders/reduce.wgsl).

use super::max_elems_per_dispatch;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor, SOFTWARE_LOOP_LIMIT};
use crate::shaders::REDUCE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    SumSq,
}

impl ReduceOp {
    fn code(self) -> f64 {
        match self {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => 1.0,
            ReduceOp::SumSq => 2.0,
        }
    }
    /// How partial results combine in later passes.
    fn combine(self) -> ReduceOp {
        match self {
            ReduceOp::Max => ReduceOp::Max,
            _ => ReduceOp::Sum,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    row_len: u32,
    total: u32,
    in_off: u32,
    out_off: u32,
    _pad: [u32; 3],
}

/// Elements one workgroup folds in a whole-tensor pass (256 threads x 64 each).
const FLAT_ROW: usize = 256 * 64;

/// Reduces `rows` consecutive segments of `row_len` elements of `src`, starting at element
/// `start` (the last segment may be cut short at `start + total`), into `dst[dst_start..]`.
fn reduce_segments(
    gpu: &Gpu,
    op: ReduceOp,
    src: &Tensor,
    start: usize,
    total: usize,
    row_len: usize,
    dst: &Tensor,
    dst_start: usize,
) -> Result<()> {
    let rows = total.div_ceil(row_len);
    let max_elems = max_elems_per_dispatch(gpu, row_len);
    let rows_per = (max_elems / row_len).min(gpu.split_limits().max_workgroups as usize).max(1);
    let mut r0 = 0;
    while r0 < rows {
        let r = rows_per.min(rows - r0);
        let e0 = r0 * row_len;
        let n = (r * row_len).min(total - e0);
        let (sb, in_off) = src.bind(gpu, start + e0, n)?;
        let (db, out_off) = dst.bind(gpu, dst_start + r0, r)?;
        let meta = Meta { rows: r as u32, row_len: row_len as u32, total: n as u32, in_off, out_off, _pad: [0; 3] };
        gpu.dispatch(REDUCE, "reduce_rows", &[("OP", op.code())], bytemuck::bytes_of(&meta), &[sb, db], [r as u32, 1, 1])?;
        r0 += r;
    }
    Ok(())
}

/// Reduces `n` elements of `src` from `start` into `dst[dst_index]`, in passes of partial results.
fn reduce_range(gpu: &Gpu, op: ReduceOp, src: &Tensor, start: usize, n: usize, dst: &Tensor, dst_index: usize) -> Result<()> {
    let seg = FLAT_ROW.min(Tensor::max_binding_elems(gpu));
    if n <= seg {
        return reduce_segments(gpu, op, src, start, n, seg, dst, dst_index);
    }
    let parts = gpu.empty(&[n.div_ceil(seg)])?;
    reduce_segments(gpu, op, src, start, n, seg, &parts, 0)?;
    reduce_range(gpu, op.combine(), &parts, 0, parts.numel(), dst, dst_index)
}

/// Reduces each row of a 2-D tensor: [rows, cols] -> [rows].
pub fn reduce_rows(gpu: &Gpu, x: &Tensor, op: ReduceOp) -> Result<Tensor> {
    let &[rows, cols] = x.shape() else {
        return Err(Error::shape("reduce_rows", format!("{:?} is not 2-D", x.shape())));
    };
    if cols == 0 {
        return Err(Error::shape("reduce_rows", "rows of length 0 have no reduction"));
    }
    let out = gpu.empty(&[rows])?;
    // One pass strides a row by the workgroup's 256 threads, within a software adapter's limit
    // on one loop's iterations.
    let strides_fit = !gpu.is_cpu() || cols.div_ceil(256) <= SOFTWARE_LOOP_LIMIT;
    if cols <= Tensor::max_binding_elems(gpu) && strides_fit {
        reduce_segments(gpu, op, x, 0, rows * cols, cols, &out, 0)?;
    } else {
        // A row longer than one binding or than one pass's loop: each row on its own, in passes.
        for r in 0..rows {
            reduce_range(gpu, op, x, r * cols, cols, &out, r)?;
        }
    }
    Ok(out)
}

/// Reduces a whole tensor to one value, kept on the GPU: shape [1].
pub fn reduce_all(gpu: &Gpu, x: &Tensor, op: ReduceOp) -> Result<Tensor> {
    if x.numel() == 0 {
        return Err(Error::shape("reduce_all", "an empty tensor has no reduction"));
    }
    let out = gpu.empty(&[1])?;
    reduce_range(gpu, op, x, 0, x.numel(), &out, 0)?;
    Ok(out)
}

/// Reduces a whole tensor and reads the value back.
pub fn reduce_all_value(gpu: &Gpu, x: &Tensor, op: ReduceOp) -> Result<f32> {
    Ok(gpu.download(&reduce_all(gpu, x, op)?)?[0])
}

/// ‖x‖_F (or the 2-norm of a vector), summed on the GPU in f32 and read back.
pub fn frobenius(gpu: &Gpu, x: &Tensor) -> Result<f64> {
    Ok((reduce_all_value(gpu, x, ReduceOp::SumSq)? as f64).sqrt())
}
