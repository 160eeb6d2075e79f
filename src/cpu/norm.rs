//! Reference RMSNorm and LayerNorm in f64; the row length is the weight's length.

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// RMSNorm of one row, all in f64 (the model oracle works on f64 rows).
pub fn rms_norm_row(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

/// LayerNorm of one row with the biased variance, all in f64.
pub fn layer_norm_row(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter().zip(w).zip(b).map(|((v, g), b)| (v - mean) * inv * g + b).collect()
}

pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let w = f64s(w);
    x.chunks(w.len()).flat_map(|row| rms_norm_row(&f64s(row), &w, eps)).collect()
}

pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let (w, b) = (f64s(w), f64s(b));
    x.chunks(w.len()).flat_map(|row| layer_norm_row(&f64s(row), &w, &b, eps)).collect()
}
