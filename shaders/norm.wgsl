// Row normalisation over the last dimension; one workgroup (WG threads) per row.
//   rms_norm    out = x / sqrt(mean(x^2) + eps) * w
//   layer_norm  out = (x - mean) / sqrt(var + eps) * w + b   (biased variance)
//   *_bwd       dx from x, w and dy (binding 3 read as dy); the bias does not affect dx. With
//               `accumulate` they add dx to what out holds (a residual path's gradient), so the
//               backward of a block needs no separate add, with the add's rounding
//   rms_norm_matvec  out[r, n] = rms_norm(x)[r, :] · m[n, :] (binding 3 read as the matrix m,
//               [n_out, cols], from dy_off; out [rows, n_out]): the norm and the product that
//               reads it in one dispatch, for a few rows (a decoded token)
// Binding 3 is the bias (read) in layer_norm, dy in the backward entries, the matrix in
// rms_norm_matvec and the output in rms_norm: no entry uses two of them.

struct Meta {
    rows: u32, cols: u32, x_off: u32, out_off: u32,
    eps: f32, dy_off: u32, n_out: u32, accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_rms: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Threads per row, a power of two: 256 on a GPU, 8 on a CPU adapter (`Gpu::row_threads`).
override WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// Sum of `v` over the workgroup; every thread gets the result.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let total = partial[0];
    // The next call overwrites `partial`: everyone must have read the total first.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG, 1, 1)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base_in = p.x_off + wg.x * p.cols;
    let base_out = p.out_off + wg.x * p.cols;
    var sq = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { let v = x[base_in + j]; sq += v * v; }
    let inv = 1.0 / sqrt(workgroup_sum(lid.x, sq) / f32(p.cols) + p.eps);
    for (var j = lid.x; j < p.cols; j += WG) { out_rms[base_out + j] = x[base_in + j] * inv * w[j]; }
}

// One workgroup per output (n, r), like matmul_dot: the row's sum of squares rides along the
// dot product, so the normalised row is never stored. Rounds differently from rms_norm then a
// product (inv · Σ x w m instead of Σ (x inv w) m), within f32 rounding of it.
@compute @workgroup_size(WG, 1, 1)
fn rms_norm_matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base_x = p.x_off + wg.y * p.cols;
    let base_m = p.dy_off + wg.x * p.cols;
    var sq = 0.0;
    var acc = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) {
        let v = x[base_x + j];
        sq += v * v;
        acc = fma(v * w[j], b[base_m + j], acc);
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid.x, sq) / f32(p.cols) + p.eps);
    let dot = workgroup_sum(lid.x, acc);
    if (lid.x == 0u) { out[p.out_off + wg.y * p.n_out + wg.x] = dot * inv; }
}

@compute @workgroup_size(WG, 1, 1)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base_in = p.x_off + wg.x * p.cols;
    let base_out = p.out_off + wg.x * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { s += x[base_in + j]; }
    let mean = workgroup_sum(lid.x, s) / n;
    // Two passes: the variance of the centred values does not cancel the way E[x^2] - mean^2 does.
    var sq = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { let c = x[base_in + j] - mean; sq += c * c; }
    let inv = 1.0 / sqrt(workgroup_sum(lid.x, sq) / n + p.eps);
    for (var j = lid.x; j < p.cols; j += WG) { out[base_out + j] = (x[base_in + j] - mean) * inv * w[j] + b[j]; }
}

// A backward entry's dx_i: stored, or added to out's value.
fn put(i: u32, dx: f32) {
    if (p.accumulate != 0u) {
        out[i] = out[i] + dx;
    } else {
        out[i] = dx;
    }
}

// y = x r w with r = (mean(x^2) + eps)^(-1/2):
// dx_j = r w_j dy_j - x_j r^3 sum_k(dy_k w_k x_k) / n.
@compute @workgroup_size(WG, 1, 1)
fn rms_norm_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bx = p.x_off + wg.x * p.cols;
    let bd = p.dy_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    let n = f32(p.cols);
    var sq = 0.0;
    var dot = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) {
        let v = x[bx + j];
        sq += v * v;
        dot += dy[bd + j] * w[j] * v;
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid.x, sq) / n + p.eps);
    let c = workgroup_sum(lid.x, dot) * inv * inv * inv / n;
    for (var j = lid.x; j < p.cols; j += WG) { put(bo + j, inv * w[j] * dy[bd + j] - c * x[bx + j]); }
}

// With xhat = (x - mean) r and g = dy w: dx = r (g - mean(g) - xhat mean(g xhat)).
@compute @workgroup_size(WG, 1, 1)
fn layer_norm_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bx = p.x_off + wg.x * p.cols;
    let bd = p.dy_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { s += x[bx + j]; }
    let mean = workgroup_sum(lid.x, s) / n;
    var sq = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { let c = x[bx + j] - mean; sq += c * c; }
    let inv = 1.0 / sqrt(workgroup_sum(lid.x, sq) / n + p.eps);
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) {
        let g = dy[bd + j] * w[j];
        sg += g;
        sgx += g * (x[bx + j] - mean) * inv;
    }
    let mg = workgroup_sum(lid.x, sg) / n;
    let mgx = workgroup_sum(lid.x, sgx) / n;
    for (var j = lid.x; j < p.cols; j += WG) {
        let xhat = (x[bx + j] - mean) * inv;
        put(bo + j, inv * (dy[bd + j] * w[j] - mg - xhat * mgx));
    }
}
