//! Reference MLP activations in f64.

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// GPT-2's tanh approximation of GELU ("gelu_new").
pub fn gelu_scalar(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| silu(g as f64) * u as f64).collect()
}

pub fn gelu(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| gelu_scalar(v as f64)).collect()
}

pub fn add_bias(x: &[f32], b: &[f32]) -> Vec<f64> {
    x.chunks(b.len()).flat_map(|row| row.iter().zip(b).map(|(&v, &c)| v as f64 + c as f64)).collect()
}
