//! Reference RMSNorm and LayerNorm in f64; the row length is the weight's length.

pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(w.len()) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / w.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| v as f64 * inv * g as f64));
    }
    out
}

pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let n = w.len() as f64;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(w.len()) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..row.len() {
            out.push((row[j] as f64 - mean) * inv * w[j] as f64 + b[j] as f64);
        }
    }
    out
}
