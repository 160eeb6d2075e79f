//! Row gather, i.e. embedding lookup (shaders/gather.wgsl).

use super::{chunks, groups};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::shaders::GATHER;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    n_ids: u32,
    cols: u32,
    row_start: u32,
    table_rows: u32,
    ids_off: u32,
    table_off: u32,
    out_off: u32,
    _pad: u32,
}

/// out[i, :] = table[ids[i], :]. Ids are checked on the host against the table's row count.
pub fn gather_rows(gpu: &Gpu, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let &[rows, cols] = table.shape() else {
        return Err(Error::shape("gather_rows", format!("table {:?} is not 2-D", table.shape())));
    };
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
        return Err(Error::shape("gather_rows", format!("id {bad} at position {i} is out of range for {rows} rows")));
    }
    let out = gpu.empty(&[ids.len(), cols])?;
    if ids.is_empty() || cols == 0 {
        return Ok(out);
    }
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge { op: "gather_rows", detail: format!("a row of {cols} values is larger than one binding") });
    }
    let ids_t = gpu.upload_u32(ids, &[ids.len()])?;
    debug_assert_eq!(ids_t.dtype(), DType::U32);
    let limits = gpu.split_limits();
    let col_groups = groups(cols, 256);
    if col_groups > limits.max_workgroups {
        return Err(Error::TooLarge { op: "gather_rows", detail: format!("{cols} columns need more than one dispatch row") });
    }
    let ids_per = (max_elems / cols).min(limits.max_workgroups as usize).max(1);
    let table_rows_per = (max_elems / cols).max(1);
    for (t0, tn) in chunks(rows, table_rows_per) {
        let (tb, table_off) = table.bind(gpu, t0 * cols, tn * cols)?;
        for (i0, n) in chunks(ids.len(), ids_per) {
            let (ib, ids_off) = ids_t.bind(gpu, i0, n)?;
            let (ob, out_off) = out.bind(gpu, i0 * cols, n * cols)?;
            let meta = Meta {
                n_ids: n as u32,
                cols: cols as u32,
                row_start: t0 as u32,
                table_rows: tn as u32,
                ids_off,
                table_off,
                out_off,
                _pad: 0,
            };
            gpu.dispatch(GATHER, "gather_rows", &[], bytemuck::bytes_of(&meta), &[ib, tb, ob], [col_groups, n as u32, 1])?;
        }
    }
    Ok(out)
}
