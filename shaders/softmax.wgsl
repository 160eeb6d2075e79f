// Row softmax: out[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)); one workgroup per row.
// softmax_bwd: dx = y (dy - sum(y dy)) with y = x (the forward's output) and dy at binding 2.

struct Meta {
    rows: u32, cols: u32, in_off: u32, out_off: u32,
    dy_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn softmax_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base_in = p.in_off + wg.x * p.cols;
    let base_out = p.out_off + wg.x * p.cols;

    var m = bitcast<f32>(0xff800000u); // -inf
    for (var j = lid.x; j < p.cols; j += WG) { m = max(m, x[base_in + j]); }
    partial[lid.x] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial[lid.x] = max(partial[lid.x], partial[lid.x + s]); }
        workgroupBarrier();
    }
    let row_max = partial[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { sum += exp(x[base_in + j] - row_max); }
    partial[lid.x] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial[lid.x] += partial[lid.x + s]; }
        workgroupBarrier();
    }
    let inv = 1.0 / partial[0];

    for (var j = lid.x; j < p.cols; j += WG) { out[base_out + j] = exp(x[base_in + j] - row_max) * inv; }
}

@compute @workgroup_size(256, 1, 1)
fn softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let by = p.in_off + wg.x * p.cols;
    let bd = p.dy_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    var s = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { s += x[by + j] * dy[bd + j]; }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid.x < h) { partial[lid.x] += partial[lid.x + h]; }
        workgroupBarrier();
    }
    let total = partial[0];
    for (var j = lid.x; j < p.cols; j += WG) { dx[bo + j] = x[by + j] * (dy[bd + j] - total); }
}
