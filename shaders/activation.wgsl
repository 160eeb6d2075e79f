// MLP activations over n elements; offsets are in elements, relative to each binding.
//   silu_mul  out = gate * sigmoid(gate) * up          (x = gate, y = up; SwiGLU)
//   silu_mul_halves  the same with gate and up the two halves of each row of x = y =
//             [rows, 2·cols] (one product with the gate and up weights stacked); out is
//             [rows, cols]
//   silu_mul_matvec  out[r, n] (+)= silu_mul_halves(x)[r, :] · y[n, :] for x = [rows, 2·cols]
//             and the matrix y = [n_out, cols] (the MLP's down-projection of a decoded token),
//             the activation never stored; with `accumulate`, added to what out holds (the
//             residual stream), like the matmul's beta = 1. One workgroup per output.
//   gelu      dst = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2's gelu_new)
//   add_bias  out = x + y[(col0 + i) % cols]           (y = bias of one row, bound whole)
//   silu_mul_bwd  out_a = dz * up * s (1 + g (1 - s)), out_b = dz * g * s   (s = sigmoid(g);
//                 x = gate, y = up, z = dy; d_gate into out_a, d_up into out_b)
//   silu_mul_bwd_halves  silu_mul_bwd with gate and up the two halves of each row of x = y =
//                 [rows, 2·cols] (silu_mul_halves' input) and their gradients the two halves of
//                 each row of out_a (z = dy: [rows, cols]), ready for one product with the
//                 stacked weights
//   gelu_bwd      out = y * gelu'(x)                  (y = dy)
// Binding 2 is `y` (read) in silu_mul, add_bias and the backward entries, and `dst`
// (read_write) in gelu; binding 3 is `out` except in silu_mul_bwd, which reads dy there.

struct Meta {
    n: u32, x_off: u32, y_off: u32, out_off: u32,
    cols: u32, col0: u32, z_off: u32, out2_off: u32,
    n_out: u32, accumulate: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_b: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let g = x[p.x_off + i];
    // For very negative g, exp(-g) overflows to inf and g / inf = -0, the right limit.
    out[p.out_off + i] = g / (1.0 + exp(-g)) * y[p.y_off + i];
}

@compute @workgroup_size(256, 1, 1)
fn silu_mul_halves(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let row = 2u * p.cols * (i / p.cols) + i % p.cols;
    let g = x[p.x_off + row];
    out[p.out_off + i] = g / (1.0 + exp(-g)) * y[p.y_off + row + p.cols];
}

const DOT_WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn silu_mul_matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base_x = p.x_off + wg.y * 2u * p.cols;
    let base_m = p.y_off + wg.x * p.cols;
    var acc = 0.0;
    for (var j = lid.x; j < p.cols; j += DOT_WG) {
        let g = x[base_x + j];
        acc = fma(g / (1.0 + exp(-g)) * x[base_x + p.cols + j], y[base_m + j], acc);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = DOT_WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let o = p.out_off + wg.y * p.n_out + wg.x;
        if (p.accumulate != 0u) { out[o] = out[o] + red[0]; } else { out[o] = red[0]; }
    }
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

@compute @workgroup_size(256, 1, 1)
fn silu_mul_bwd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let g = x[p.x_off + i];
    let d = z[p.z_off + i];
    // exp(-g) = inf gives s = 0: d_up = -0 and d_gate = 0, the right limits, with no NaN
    // since 1 + g (1 - s) stays finite.
    let s = 1.0 / (1.0 + exp(-g));
    // 1 - s from its own exp: the subtraction would lose its digits where s is close to 1.
    let sm = 1.0 / (1.0 + exp(g));
    out_a[p.out_off + i] = d * y[p.y_off + i] * s * (1.0 + g * sm);
    out_b[p.out2_off + i] = d * g * s;
}

@compute @workgroup_size(256, 1, 1)
fn silu_mul_bwd_halves(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let row = 2u * p.cols * (i / p.cols) + i % p.cols;
    let g = x[p.x_off + row];
    let u = y[p.y_off + row + p.cols];
    let d = z[p.z_off + i];
    // As silu_mul_bwd, element for element.
    let s = 1.0 / (1.0 + exp(-g));
    let sm = 1.0 / (1.0 + exp(g));
    out_a[p.out_off + row] = d * u * s * (1.0 + g * sm);
    out_a[p.out_off + row + p.cols] = d * g * s;
}

@compute @workgroup_size(256, 1, 1)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let v = x[p.x_off + i];
    let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
    let du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
    // s = 0.5 (1 + tanh u) as in the forward and 1 - tanh^2 u = 4 s (1 - s); 1 - s comes from
    // its own exp (no cancellation where s is close to 1), and both saturate without NaN.
    let s = 1.0 / (1.0 + exp(-2.0 * u));
    let sm = 1.0 / (1.0 + exp(2.0 * u));
    out[p.out_off + i] = y[p.y_off + i] * (s + v * 2.0 * s * sm * du);
}
