// The prelude of the matmul shaders (shaders/matmul.wgsl, shaders/matmul_lanes.wgsl): src/shaders.rs
// puts it before each, since WGSL has no include. C[b] = alpha * op(A[b]) * op(B[b]) +
// beta * C[b], row-major, f32; op(A) is M x K (A stored M x K, or K x M when TRANS_A), op(B)
// K x N (B stored K x N, or N x K when TRANS_B); offsets in elements, relative to the binding.

struct Meta {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, _pad0: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad1: u32,
    a_bstride: u32, b_bstride: u32, c_bstride: u32, _pad2: u32,
    alpha: f32, beta: f32, _pad3: u32, _pad4: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ALIGNED: bool = false;

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

fn a_at(i: u32) -> f32 { return a[i >> 2u][i & 3u]; }
fn b_at(i: u32) -> f32 { return b[i >> 2u][i & 3u]; }

// Elements i..i+3 of A, of which the first `valid` exist; the rest read as zero. Aligned
// kernels (ALIGNED: every leading dimension and offset a multiple of 4) load one vec4.
// With ALIGNED, i is a multiple of 4, so the vec4 holding it lies inside the binding (bindings
// cover whole 16-byte blocks): one load, the missing tail masked to zero by `first`.
fn first(v: vec4<f32>, valid: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(valid));
}

fn a4(i: u32, valid: u32) -> vec4<f32> {
    if (ALIGNED) {
        if (valid == 0u) { return vec4<f32>(0.0); }
        return first(a[i >> 2u], valid);
    }
    var v = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        if (t < valid) { v[t] = a_at(i + t); }
    }
    return v;
}

fn b4(i: u32, valid: u32) -> vec4<f32> {
    if (ALIGNED) {
        if (valid == 0u) { return vec4<f32>(0.0); }
        return first(b[i >> 2u], valid);
    }
    var v = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        if (t < valid) { v[t] = b_at(i + t); }
    }
    return v;
}

// op(A)[m, k..k+3], the first `valid` of them: one load along a row of A, or four along a
// column of A stored transposed (the decode kernels' rows).
fn op_a4(abase: u32, m: u32, k: u32, valid: u32) -> vec4<f32> {
    if (TRANS_A) {
        var v = vec4<f32>(0.0);
        for (var t = 0u; t < 4u; t++) {
            if (t < valid) { v[t] = a_at(abase + (k + t) * p.lda + m); }
        }
        return v;
    }
    return a4(abase + m * p.lda + k, valid);
}

fn store(i: u32, v: f32) {
    if (p.beta != 0.0) {
        c[i >> 2u][i & 3u] = p.alpha * v + p.beta * c[i >> 2u][i & 3u];
    } else {
        c[i >> 2u][i & 3u] = p.alpha * v;
    }
}

// w[j] = op(B)[k..k+3, n0 + 4q + j] for the block's column quarter q, of which `cols` columns
// (counted from n0) exist. A quarter past the edge reads the last one that has a column.
fn block_w(bbase: u32, k: u32, valid: u32, n0: u32, q: u32, cols: u32) -> mat4x4<f32> {
    let c = min(4u * q, (cols - 1u) & ~3u);
    let have = cols - c;
    var w = mat4x4<f32>();
    if (TRANS_B) {
        for (var j = 0u; j < 4u; j++) {
            w[j] = b4(bbase + (n0 + c + min(j, have - 1u)) * p.ldb + k, valid);
        }
        return w;
    }
    for (var s = 0u; s < 4u; s++) {
        let row = bbase + (k + min(s, valid - 1u)) * p.ldb;
        w[s] = select(vec4<f32>(0.0), b4(row + n0 + c, min(have, 4u)), s < valid);
    }
    return transpose(w);
}
