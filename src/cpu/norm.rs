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

/// dx of `rms_norm_row` for the upstream gradient dy:
/// dx_j = r w_j dy_j − x_j r³ Σ_k dy_k w_k x_k / n with r = (mean(x²) + eps)^−½.
pub fn rms_norm_bwd_row(x: &[f64], w: &[f64], dy: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / n + eps).sqrt();
    let dot: f64 = x.iter().zip(w).zip(dy).map(|((v, g), d)| v * g * d).sum();
    x.iter().zip(w).zip(dy).map(|((v, g), d)| r * g * d - v * r * r * r * dot / n).collect()
}

/// dx of `layer_norm_row` for the upstream gradient dy (the bias does not enter):
/// dx = r (g − mean(g) − x̂ mean(g x̂)) with g = dy w and x̂ = (x − mean) r.
pub fn layer_norm_bwd_row(x: &[f64], w: &[f64], dy: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let r = 1.0 / (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n + eps).sqrt();
    let g: Vec<f64> = dy.iter().zip(w).map(|(d, w)| d * w).collect();
    let xhat: Vec<f64> = x.iter().map(|v| (v - mean) * r).collect();
    let mg = g.iter().sum::<f64>() / n;
    let mgx = g.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / n;
    g.iter().zip(&xhat).map(|(g, h)| r * (g - mg - h * mgx)).collect()
}

pub fn rms_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], eps: f64) -> Vec<f64> {
    let w = f64s(w);
    x.chunks(w.len()).zip(dy.chunks(w.len())).flat_map(|(row, d)| rms_norm_bwd_row(&f64s(row), &w, &f64s(d), eps)).collect()
}

pub fn layer_norm_bwd(x: &[f32], w: &[f32], dy: &[f32], eps: f64) -> Vec<f64> {
    let w = f64s(w);
    x.chunks(w.len()).zip(dy.chunks(w.len())).flat_map(|(row, d)| layer_norm_bwd_row(&f64s(row), &w, &f64s(d), eps)).collect()
}
