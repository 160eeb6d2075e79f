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

/// d silu(x) / dx = s (1 + x (1 − s)) with s = sigmoid(x).
pub fn silu_grad(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// d gelu_scalar(x) / dx for the tanh form.
pub fn gelu_grad(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
}

/// (d_gate, d_up) of silu(gate) · up for the upstream gradient dy.
pub fn silu_mul_bwd(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let it = gate.iter().zip(up).zip(dy).map(|((&g, &u), &d)| (g as f64, u as f64, d as f64));
    it.map(|(g, u, d)| (d * u * silu_grad(g), d * silu(g))).unzip()
}

pub fn gelu_bwd(x: &[f32], dy: &[f32]) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &d)| d as f64 * gelu_grad(v as f64)).collect()
}
