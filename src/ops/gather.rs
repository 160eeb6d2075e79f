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
    ids_stride: u32,
    total_rows: u32,
    _pad: [u32; 3],
}

/// out[i, :] = table[ids[i], :]. Ids are checked on the host against the table's row count.
pub fn gather_rows(gpu: &Gpu, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    gather_rows_from(gpu, &[table], ids)
}

/// out[i, :] = row ids[i] of the tables stacked one after another (without forming the
/// stack): rows of several batches gathered into one tensor. Every table has the same columns.
pub fn gather_rows_from(gpu: &Gpu, tables: &[&Tensor], ids: &[u32]) -> Result<Tensor> {
    gather(gpu, tables, Ids::Host(ids))
}

/// out[i, :] = table[index[i · stride], :] with the indices a kernel wrote as f32 (the index
/// plane of `row_top_k`: stride k), read on the GPU: a decode step takes the token the last
/// step chose without waiting for it to come back. n rows; an index that is not a whole number
/// in 0..rows (a NaN from logits that held one) gives a NaN row instead of an error, since the
/// host cannot see it yet — the caller checks the indices when they come back.
pub fn gather_rows_at(gpu: &Gpu, table: &Tensor, index: &Tensor, stride: usize, n: usize) -> Result<Tensor> {
    if index.dtype() != DType::F32 {
        return Err(Error::shape("gather_rows_at", format!("indices {index:?} are not f32")));
    }
    if stride == 0 || (n > 0 && (n - 1) * stride >= index.numel()) {
        return Err(Error::shape("gather_rows_at", format!("{n} indices {stride} apart in {index:?}")));
    }
    if index.numel() >= 1 << 32 || (n > 0 && stride > u32::MAX as usize / n) {
        return Err(Error::TooLarge { op: "gather_rows_at", detail: format!("{n} indices {stride} apart") });
    }
    gather(gpu, &[table], Ids::Found { index, stride, n })
}

/// Where a gather's ids come from.
enum Ids<'a> {
    /// From the host, checked against the tables' rows there.
    Host(&'a [u32]),
    /// Found by a kernel: n f32 indices `stride` apart.
    Found { index: &'a Tensor, stride: usize, n: usize },
}

fn gather(gpu: &Gpu, tables: &[&Tensor], source: Ids<'_>) -> Result<Tensor> {
    let mut cols = None;
    let mut rows = 0;
    for (k, table) in tables.iter().enumerate() {
        let &[r, c] = table.shape() else {
            return Err(Error::shape("gather_rows", format!("table {k} {:?} is not 2-D", table.shape())));
        };
        if cols.is_some_and(|cols| cols != c) {
            return Err(Error::shape("gather_rows", format!("table {k} has {c} columns, table 0 {}", cols.unwrap_or(0))));
        }
        cols = Some(c);
        rows += r;
    }
    let Some(cols) = cols else {
        return Err(Error::shape("gather_rows", "no table to gather from"));
    };
    let n_ids = match source {
        Ids::Host(ids) => {
            if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
                return Err(Error::shape("gather_rows", format!("id {bad} at position {i} is out of range for {rows} rows")));
            }
            ids.len()
        }
        Ids::Found { n, .. } => n,
    };
    // Indices found on the GPU are f32, whole numbers exact below 2^24.
    if matches!(source, Ids::Found { .. }) && rows > 1 << 24 {
        return Err(Error::TooLarge { op: "gather_rows_at", detail: format!("{rows} rows (indices as f32 must stay below 2^24)") });
    }
    let out = gpu.empty(&[n_ids, cols])?;
    if n_ids == 0 || cols == 0 {
        return Ok(out);
    }
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge { op: "gather_rows", detail: format!("a row of {cols} values is larger than one binding") });
    }
    let uploaded;
    let (ids_t, ids_stride, entry) = match source {
        Ids::Host(ids) => {
            uploaded = gpu.upload_u32(ids, &[ids.len()])?;
            (&uploaded, 1, "gather_rows")
        }
        Ids::Found { index, stride, .. } => (index, stride, "gather_rows_at"),
    };
    let limits = gpu.split_limits();
    let col_groups = groups(cols, 256);
    if col_groups > limits.max_workgroups {
        return Err(Error::TooLarge { op: "gather_rows", detail: format!("{cols} columns need more than one dispatch row") });
    }
    let ids_per = (max_elems / cols).min(max_elems / ids_stride).min(limits.max_workgroups as usize).max(1);
    let table_rows_per = (max_elems / cols).max(1);
    // Each dispatch sees one range of one table's rows and writes the output rows whose id
    // falls there, so every output row is written by exactly one dispatch.
    let mut first_row = 0;
    for table in tables {
        let table_rows = table.shape()[0];
        for (t0, tn) in chunks(table_rows, table_rows_per) {
            let (tb, table_off) = table.bind(gpu, t0 * cols, tn * cols)?;
            for (i0, n) in chunks(n_ids, ids_per) {
                let (ib, ids_off) = ids_t.bind(gpu, i0 * ids_stride, (n - 1) * ids_stride + 1)?;
                let (ob, out_off) = out.bind(gpu, i0 * cols, n * cols)?;
                let meta = Meta {
                    n_ids: n as u32,
                    cols: cols as u32,
                    row_start: (first_row + t0) as u32,
                    table_rows: tn as u32,
                    ids_off,
                    table_off,
                    out_off,
                    ids_stride: ids_stride as u32,
                    total_rows: rows as u32,
                    _pad: [0; 3],
                };
                gpu.dispatch(GATHER, entry, &[], bytemuck::bytes_of(&meta), &[ib, tb, ob], [col_groups, n as u32, 1])?;
            }
        }
        first_row += table_rows;
    }
    Ok(out)
}

/// The gradient of `gather_rows` w.r.t. the table: out: [vocab, C] with out[id, :] the sum of
/// d_rows[i, :] over the positions i where ids[i] = id (zero for ids not present). d_rows:
/// [ids.len(), C]. Deterministic: each sum runs over its positions in increasing order.
pub fn scatter_add_rows(gpu: &Gpu, d_rows: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    const OP: &str = "scatter_add_rows";
    let &[n, cols] = d_rows.shape() else {
        return Err(Error::shape(OP, format!("d_rows {:?} is not 2-D", d_rows.shape())));
    };
    if n != ids.len() {
        return Err(Error::shape(OP, format!("d_rows {:?} has {n} rows for {} ids", d_rows.shape(), ids.len())));
    }
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::shape(OP, format!("id {bad} at position {i} is out of range for vocab {vocab}")));
    }
    let out = gpu.full(&[vocab, cols], 0.0)?;
    if n == 0 || cols == 0 {
        return Ok(out);
    }
    let max_elems = Tensor::max_binding_elems(gpu);
    if n * cols > max_elems {
        return Err(Error::TooLarge { op: OP, detail: format!("d_rows {:?} is larger than one binding ({max_elems} values)", d_rows.shape()) });
    }
    let limits = gpu.split_limits();
    let col_groups = groups(cols, 256);
    if col_groups > limits.max_workgroups {
        return Err(Error::TooLarge { op: OP, detail: format!("{cols} columns need more than one dispatch row") });
    }
    // Positions grouped by id, each group in increasing position order.
    let mut by_id: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for (i, &id) in ids.iter().enumerate() {
        by_id.entry(id).or_default().push(i as u32);
    }
    let groups_list: Vec<(u32, Vec<u32>)> = by_id.into_iter().collect();
    let (db, table_off) = d_rows.bind(gpu, 0, n * cols)?;
    let mut start = 0;
    while start < groups_list.len() {
        // As many distinct ids as fit the workgroup limit and an output span of one binding.
        let first = groups_list[start].0 as usize;
        let mut end = start + 1;
        while end < groups_list.len()
            && end - start < limits.max_workgroups as usize
            && (groups_list[end].0 as usize - first + 1) * cols <= max_elems
        {
            end += 1;
        }
        let part = &groups_list[start..end];
        let last = part[part.len() - 1].0 as usize;
        let mut index: Vec<u32> = part.iter().map(|(id, _)| *id).collect();
        let mut acc = 0u32;
        index.push(0);
        for (_, p) in part {
            acc += p.len() as u32;
            index.push(acc);
        }
        index.extend(part.iter().flat_map(|(_, p)| p.iter().copied()));
        let index_t = gpu.upload_u32(&index, &[index.len()])?;
        let (ib, ids_off) = index_t.bind(gpu, 0, index.len())?;
        let (ob, out_off) = out.bind(gpu, first * cols, (last - first + 1) * cols)?;
        let meta = Meta {
            n_ids: part.len() as u32,
            cols: cols as u32,
            row_start: first as u32,
            table_rows: 0,
            ids_off,
            table_off,
            out_off,
            ids_stride: 1,
            total_rows: vocab as u32,
            _pad: [0; 3],
        };
        gpu.dispatch(GATHER, OP, &[], bytemuck::bytes_of(&meta), &[ib, db, ob], [col_groups, part.len() as u32, 1])?;
        start = end;
    }
    Ok(out)
}
