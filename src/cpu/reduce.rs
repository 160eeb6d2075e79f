//! Reference reductions in f64.

use crate::ops::reduce::ReduceOp;

fn fold(op: ReduceOp, xs: &[f32]) -> f64 {
    match op {
        ReduceOp::Sum => xs.iter().map(|&x| x as f64).sum(),
        ReduceOp::SumSq => xs.iter().map(|&x| x as f64 * x as f64).sum(),
        ReduceOp::Max => xs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64)),
    }
}

pub fn reduce_rows(x: &[f32], cols: usize, op: ReduceOp) -> Vec<f64> {
    x.chunks(cols).map(|row| fold(op, row)).collect()
}

pub fn reduce_all(x: &[f32], op: ReduceOp) -> f64 {
    fold(op, x)
}
