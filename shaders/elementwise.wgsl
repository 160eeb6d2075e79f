// Elementwise ops over n elements; offsets are in elements, relative to each binding.
//   add           out = x + y
//   scale         dst = alpha * x
//   axpy          dst = alpha * x + dst
//   copy_strided  dst[dst_off + sum(i_d * dst_stride_d)] = src[src_off + sum(i_d * src_stride_d)]
//                 over a 4-D index space (shape padded with leading 1s); n = its size.
//   copy_strided_pair  the same copy of two sources into two destinations at once (x → out,
//                 y → out2: same shape, strides and offsets; threads n .. 2n do the second), so
//                 a layer's keys and values reach their caches in one dispatch.
// Binding 2 is `y` (read) in add and `dst` (read_write) elsewhere: no entry point uses both.

struct Meta {
    n: u32, off0: u32, off1: u32, off2: u32,
    alpha: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

struct CopyMeta {
    shape: vec4<u32>,
    src_strides: vec4<u32>,
    dst_strides: vec4<u32>,
    n: u32, src_off: u32, dst_off: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(0) var<uniform> cp: CopyMeta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) { out[p.off2 + i] = x[p.off0 + i] + y[p.off1 + i]; }
}

@compute @workgroup_size(256, 1, 1)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) { dst[p.off1 + i] = p.alpha * x[p.off0 + i]; }
}

@compute @workgroup_size(256, 1, 1)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) { dst[p.off1 + i] = fma(p.alpha, x[p.off0 + i], dst[p.off1 + i]); }
}

// Source and destination index of element i of the copy's index space.
fn copy_index(i: u32) -> vec2<u32> {
    var rem = i;
    var s = cp.src_off;
    var d = cp.dst_off;
    for (var dim = 3; dim >= 0; dim--) {
        let idx = rem % cp.shape[dim];
        rem = rem / cp.shape[dim];
        s += idx * cp.src_strides[dim];
        d += idx * cp.dst_strides[dim];
    }
    return vec2<u32>(s, d);
}

@compute @workgroup_size(256, 1, 1)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= cp.n) { return; }
    let sd = copy_index(i);
    dst[sd.y] = x[sd.x];
}

// x → out and y → out2 (bindings 1, 3 and 2, 4).
@compute @workgroup_size(256, 1, 1)
fn copy_strided_pair(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= 2u * cp.n) { return; }
    if (i < cp.n) {
        let sd = copy_index(i);
        out[sd.y] = x[sd.x];
    } else {
        let sd = copy_index(i - cp.n);
        out2[sd.y] = y[sd.x];
    }
}
