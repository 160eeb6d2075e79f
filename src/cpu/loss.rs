//! Reference row log-softmax, its backward and softmax's backward, in f64.

/// log softmax of one row.
pub fn log_softmax_row(x: &[f64]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
    let lse = x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - m - lse).collect()
}

/// dx of `log_softmax_row` given its output and dlogp: dlogp − exp(logp) · Σ dlogp.
pub fn log_softmax_bwd_row(logp: &[f64], dlogp: &[f64]) -> Vec<f64> {
    let s: f64 = dlogp.iter().sum();
    logp.iter().zip(dlogp).map(|(l, d)| d - l.exp() * s).collect()
}

/// dx of softmax given its output y and dy: y (dy − Σ y dy).
pub fn softmax_bwd_row(y: &[f64], dy: &[f64]) -> Vec<f64> {
    let s: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    y.iter().zip(dy).map(|(y, d)| y * (d - s)).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn log_softmax_rows(x: &[f32], cols: usize) -> Vec<f64> {
    x.chunks(cols).flat_map(|r| log_softmax_row(&f64s(r))).collect()
}

pub fn log_softmax_bwd(logp: &[f32], dlogp: &[f32], cols: usize) -> Vec<f64> {
    logp.chunks(cols).zip(dlogp.chunks(cols)).flat_map(|(l, d)| log_softmax_bwd_row(&f64s(l), &f64s(d))).collect()
}

pub fn softmax_bwd(y: &[f32], dy: &[f32], cols: usize) -> Vec<f64> {
    y.chunks(cols).zip(dy.chunks(cols)).flat_map(|(y, d)| softmax_bwd_row(&f64s(y), &f64s(d))).collect()
}
