// MLP activations over n elements; offsets are in elements, relative to each binding.
//   silu_mul  out = gate * sigmoid(gate) * up          (x = gate, y = up; SwiGLU)
//   gelu      dst = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's gelu_new)
//   add_bias  out = x + y[(col0 + i) % cols]           (y = bias of one row, bound whole)
// Binding 2 is `y` (read) in silu_mul and add_bias and `dst` (read_write) in gelu.

struct Meta {
    n: u32, x_off: u32, y_off: u32, out_off: u32,
    cols: u32, col0: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let g = x[p.x_off + i];
    // For very negative g, exp(-g) overflows to inf and g / inf = -0, the right limit.
    out[p.out_off + i] = g / (1.0 + exp(-g)) * y[p.y_off + i];
}

@compute @workgroup_size(256, 1, 1)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let v = x[p.x_off + i];
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    // 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): some drivers' tanh returns NaN for large |u|
    // (exp(2u) / exp(2u) = inf / inf); this form saturates to 0 or 1 instead.
    dst[p.out_off + i] = v / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(256, 1, 1)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    out[p.out_off + i] = x[p.x_off + i] + y[p.y_off + (p.col0 + i) % p.cols];
}
