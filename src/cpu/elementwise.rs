//! Reference elementwise ops, softmax and gather in f64.

use crate::ops::elementwise::{pad4, View};

pub fn add(x: &[f32], y: &[f32]) -> Vec<f64> {
    x.iter().zip(y).map(|(&a, &b)| a as f64 + b as f64).collect()
}

pub fn scale(x: &[f32], alpha: f64) -> Vec<f64> {
    x.iter().map(|&a| alpha * a as f64).collect()
}

pub fn axpy(alpha: f64, x: &[f32], y: &[f32]) -> Vec<f64> {
    x.iter().zip(y).map(|(&a, &b)| alpha * a as f64 + b as f64).collect()
}

/// Copies `shape` from a strided view of `src` into a strided view of `dst` (returned whole).
pub fn copy_strided(src: &[f32], sv: View, dst: &[f32], dv: View, shape: &[usize]) -> Vec<f64> {
    let dims = pad4(shape);
    let mut out: Vec<f64> = dst.iter().map(|&v| v as f64).collect();
    for i0 in 0..dims[0] {
        for i1 in 0..dims[1] {
            for i2 in 0..dims[2] {
                for i3 in 0..dims[3] {
                    let idx = [i0, i1, i2, i3];
                    let at = |v: &View| v.offset + (0..4).map(|d| idx[d] * v.strides[d]).sum::<usize>();
                    out[at(&dv)] = src[at(&sv)] as f64;
                }
            }
        }
    }
    out
}

pub fn softmax_rows(x: &[f32], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

pub fn gather_rows(table: &[f32], cols: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| table[id as usize * cols..(id as usize + 1) * cols].iter().map(|&v| v as f64))
        .collect()
}

/// The gradient of `gather_rows` w.r.t. the table: [vocab, cols], row id summing the rows of
/// d_rows at the positions holding id.
pub fn scatter_add_rows(d_rows: &[f32], cols: usize, ids: &[u32], vocab: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; vocab * cols];
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..cols {
            out[id as usize * cols + j] += d_rows[i * cols + j] as f64;
        }
    }
    out
}
