//! Reference MLP activations in f64.

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = g as f64;
            g / (1.0 + (-g).exp()) * u as f64
        })
        .collect()
}

/// GPT-2's tanh approximation ("gelu_new"), written as the formula.
pub fn gelu(x: &[f32]) -> Vec<f64> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    x.iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
        })
        .collect()
}

/// x + b over rows of b.len().
pub fn add_bias(x: &[f32], b: &[f32]) -> Vec<f64> {
    x.chunks(b.len()).flat_map(|row| row.iter().zip(b).map(|(&v, &c)| v as f64 + c as f64)).collect()
}
