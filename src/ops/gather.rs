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
    gather_rows_from(gpu, &[table], ids)
}

/// out[i, :] = row ids[i] of the tables stacked one after another (without forming the
/// stack): rows of several batches gathered into one tensor. Every table has the same columns.
pub fn gather_rows_from(gpu: &Gpu, tables: &[&Tensor], ids: &[u32]) -> Result<Tensor> {
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
    // Each dispatch sees one range of one table's rows and writes the output rows whose id
    // falls there, so every output row is written by exactly one dispatch.
    let mut first_row = 0;
    for table in tables {
        let table_rows = table.shape()[0];
        for (t0, tn) in chunks(table_rows, table_rows_per) {
            let (tb, table_off) = table.bind(gpu, t0 * cols, tn * cols)?;
            for (i0, n) in chunks(ids.len(), ids_per) {
                let (ib, ids_off) = ids_t.bind(gpu, i0, n)?;
                let (ob, out_off) = out.bind(gpu, i0 * cols, n * cols)?;
                let meta = Meta {
                    n_ids: n as u32,
                    cols: cols as u32,
                    row_start: (first_row + t0) as u32,
                    table_rows: tn as u32,
                    ids_off,
                    table_off,
                    out_off,
                    _pad: 0,
                };
                gpu.dispatch(GATHER, "gather_rows", &[], bytemuck::bytes_of(&meta), &[ib, tb, ob], [col_groups, n as u32, 1])?;
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
            _pad: 0,
        };
        gpu.dispatch(GATHER, OP, &[], bytemuck::bytes_of(&meta), &[ib, db, ob], [col_groups, part.len() as u32, 1])?;
        start = end;
    }
    Ok(out)
}
