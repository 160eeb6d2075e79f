// Reductions. One workgroup reduces one row: elements [row * row_len, min((row+1) * row_len,
// total)) of x, read from in_off on. A whole-tensor reduction is the same kernel over rows of a
// fixed length, run again on the partial results until one value is left.
//
// OP: 0 = sum, 1 = max, 2 = sum of squares.

struct Meta {
    rows: u32, row_len: u32, total: u32, in_off: u32,
    out_off: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn identity() -> f32 {
    if (OP == 1u) { return bitcast<f32>(0xff800000u); } // -inf
    return 0.0;
}

fn combine(u: f32, v: f32) -> f32 {
    if (OP == 1u) { return max(u, v); }
    return u + v;
}

fn lift(v: f32) -> f32 {
    if (OP == 2u) { return v * v; }
    return v;
}

@compute @workgroup_size(256, 1, 1)
fn reduce_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.x;
    let start = row * p.row_len;
    let end = min(start + p.row_len, p.total);
    var acc = identity();
    for (var i = start + lid.x; i < end; i += WG) {
        acc = combine(acc, lift(x[p.in_off + i]));
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial[lid.x] = combine(partial[lid.x], partial[lid.x + s]); }
        workgroupBarrier();
    }
    if (lid.x == 0u) { out[p.out_off + row] = partial[0]; }
}
