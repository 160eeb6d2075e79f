// Batched GEMM for software adapters with subgroups: C[b] = alpha * op(A[b]) * op(B[b]) +
// beta * C[b], row-major, the layout and parameters of shaders/matmul.wgsl (`Kernel::Lanes`).
// Its own file because a module that uses subgroup built-ins builds only on a device with
// subgroups; the host runs it only where they are exactly 8 wide (lavapipe on AVX2), so that
// its workgroup of 8 is one subgroup and lane i holds what lane i loaded.
//
//   matmul_lanes  The block kernel's scheme (each thread a block of outputs in named running
//                 sums, no workgroup memory) with op(A) shared across the subgroup: a
//                 workgroup computes 16 rows x 64 columns, each lane 16 x 8. Per four steps of
//                 K, lane i loads rows i and 8 + i of op(A) (transposed A: four rows of A's
//                 storage, two lanes per row) and every lane takes each row from its owner
//                 with subgroupBroadcast, which llvmpipe compiles to a register move, where a
//                 load runs lane by lane in a loop. A lane so loads 2 + 8 vec4s for 512
//                 multiply-adds, against 8 + 16 for the block kernel's 8 x 16. Lanes past the
//                 last column repeat its block (every lane must take part in the broadcasts)
//                 and store nothing.
//
// Meta, the bindings and the loads are those of shaders/matmul.wgsl (WGSL has no include).

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

// How many of 4 elements starting at `start` lie below `end`.
fn valid4(start: u32, end: u32) -> u32 {
    return select(0u, min(4u, end - start), end > start);
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


fn store_row8(o: u32, q0: vec4<f32>, q1: vec4<f32>, cols: u32) {
    for (var j = 0u; j < 4u; j++) {
        if (j < cols) { store(o + j, q0[j]); }
        if (j + 4u < cols) { store(o + 4u + j, q1[j]); }
    }
}

@compute @workgroup_size(8, 1, 1)
fn matmul_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wg.y * 16u;
    let rows = min(16u, p.m - m0);
    let n0 = (wg.x * 8u + lane) * 8u;
    let nl = min(n0, ((p.n - 1u) / 8u) * 8u);
    let cols = min(8u, p.n - nl);
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    var s0a = vec4<f32>(); var s0b = vec4<f32>();
    var s1a = vec4<f32>(); var s1b = vec4<f32>();
    var s2a = vec4<f32>(); var s2b = vec4<f32>();
    var s3a = vec4<f32>(); var s3b = vec4<f32>();
    var s4a = vec4<f32>(); var s4b = vec4<f32>();
    var s5a = vec4<f32>(); var s5b = vec4<f32>();
    var s6a = vec4<f32>(); var s6b = vec4<f32>();
    var s7a = vec4<f32>(); var s7b = vec4<f32>();
    var s8a = vec4<f32>(); var s8b = vec4<f32>();
    var s9a = vec4<f32>(); var s9b = vec4<f32>();
    var s10a = vec4<f32>(); var s10b = vec4<f32>();
    var s11a = vec4<f32>(); var s11b = vec4<f32>();
    var s12a = vec4<f32>(); var s12b = vec4<f32>();
    var s13a = vec4<f32>(); var s13b = vec4<f32>();
    var s14a = vec4<f32>(); var s14b = vec4<f32>();
    var s15a = vec4<f32>(); var s15b = vec4<f32>();

    for (var k = 0u; k < p.k; k += 4u) {
        let valid = min(4u, p.k - k);
        let w0 = block_w(bbase, k, valid, nl, 0u, cols);
        let w1 = block_w(bbase, k, valid, nl, 1u, cols);
        if (TRANS_A) {
            let s = lane % 4u;
            let g = lane / 4u;
            let row = abase + (k + min(s, valid - 1u)) * p.lda + m0;
            let h0 = select(0u, min(rows - 4u * g, 4u), rows > 4u * g);
            let h1 = select(0u, min(rows - 8u - 4u * g, 4u), rows > 8u + 4u * g);
            let t0 = select(vec4<f32>(0.0), a4(row + 4u * g, h0), s < valid);
            let t1 = select(vec4<f32>(0.0), a4(row + 8u + 4u * g, h1), s < valid);
            let b00 = subgroupBroadcast(t0, 0u); let b01 = subgroupBroadcast(t0, 1u); let b02 = subgroupBroadcast(t0, 2u); let b03 = subgroupBroadcast(t0, 3u);
            let b04 = subgroupBroadcast(t0, 4u); let b05 = subgroupBroadcast(t0, 5u); let b06 = subgroupBroadcast(t0, 6u); let b07 = subgroupBroadcast(t0, 7u);
            let x00 = transpose(mat4x4<f32>(b00, b01, b02, b03));
            let x01 = transpose(mat4x4<f32>(b04, b05, b06, b07));
            s0a += x00[0] * w0; s0b += x00[0] * w1;
            s1a += x00[1] * w0; s1b += x00[1] * w1;
            s2a += x00[2] * w0; s2b += x00[2] * w1;
            s3a += x00[3] * w0; s3b += x00[3] * w1;
            s4a += x01[0] * w0; s4b += x01[0] * w1;
            s5a += x01[1] * w0; s5b += x01[1] * w1;
            s6a += x01[2] * w0; s6b += x01[2] * w1;
            s7a += x01[3] * w0; s7b += x01[3] * w1;
            let b10 = subgroupBroadcast(t1, 0u); let b11 = subgroupBroadcast(t1, 1u); let b12 = subgroupBroadcast(t1, 2u); let b13 = subgroupBroadcast(t1, 3u);
            let b14 = subgroupBroadcast(t1, 4u); let b15 = subgroupBroadcast(t1, 5u); let b16 = subgroupBroadcast(t1, 6u); let b17 = subgroupBroadcast(t1, 7u);
            let x10 = transpose(mat4x4<f32>(b10, b11, b12, b13));
            let x11 = transpose(mat4x4<f32>(b14, b15, b16, b17));
            s8a += x10[0] * w0; s8b += x10[0] * w1;
            s9a += x10[1] * w0; s9b += x10[1] * w1;
            s10a += x10[2] * w0; s10b += x10[2] * w1;
            s11a += x10[3] * w0; s11b += x10[3] * w1;
            s12a += x11[0] * w0; s12b += x11[0] * w1;
            s13a += x11[1] * w0; s13b += x11[1] * w1;
            s14a += x11[2] * w0; s14b += x11[2] * w1;
            s15a += x11[3] * w0; s15b += x11[3] * w1;
        } else {
            let lo = a4(abase + (m0 + min(lane, rows - 1u)) * p.lda + k, valid);
            let hi = a4(abase + (m0 + min(lane + 8u, rows - 1u)) * p.lda + k, valid);
        { let x = subgroupBroadcast(lo, 0u); s0a += x * w0; s0b += x * w1; }
        { let x = subgroupBroadcast(lo, 1u); s1a += x * w0; s1b += x * w1; }
        { let x = subgroupBroadcast(lo, 2u); s2a += x * w0; s2b += x * w1; }
        { let x = subgroupBroadcast(lo, 3u); s3a += x * w0; s3b += x * w1; }
        { let x = subgroupBroadcast(lo, 4u); s4a += x * w0; s4b += x * w1; }
        { let x = subgroupBroadcast(lo, 5u); s5a += x * w0; s5b += x * w1; }
        { let x = subgroupBroadcast(lo, 6u); s6a += x * w0; s6b += x * w1; }
        { let x = subgroupBroadcast(lo, 7u); s7a += x * w0; s7b += x * w1; }
        { let x = subgroupBroadcast(hi, 0u); s8a += x * w0; s8b += x * w1; }
        { let x = subgroupBroadcast(hi, 1u); s9a += x * w0; s9b += x * w1; }
        { let x = subgroupBroadcast(hi, 2u); s10a += x * w0; s10b += x * w1; }
        { let x = subgroupBroadcast(hi, 3u); s11a += x * w0; s11b += x * w1; }
        { let x = subgroupBroadcast(hi, 4u); s12a += x * w0; s12b += x * w1; }
        { let x = subgroupBroadcast(hi, 5u); s13a += x * w0; s13b += x * w1; }
        { let x = subgroupBroadcast(hi, 6u); s14a += x * w0; s14b += x * w1; }
        { let x = subgroupBroadcast(hi, 7u); s15a += x * w0; s15b += x * w1; }
        }
    }
    if (n0 < p.n) {
        let o = cbase + m0 * p.ldc + n0;
        if (rows > 0u) { store_row8(o + 0u * p.ldc, s0a, s0b, cols); }
        if (rows > 1u) { store_row8(o + 1u * p.ldc, s1a, s1b, cols); }
        if (rows > 2u) { store_row8(o + 2u * p.ldc, s2a, s2b, cols); }
        if (rows > 3u) { store_row8(o + 3u * p.ldc, s3a, s3b, cols); }
        if (rows > 4u) { store_row8(o + 4u * p.ldc, s4a, s4b, cols); }
        if (rows > 5u) { store_row8(o + 5u * p.ldc, s5a, s5b, cols); }
        if (rows > 6u) { store_row8(o + 6u * p.ldc, s6a, s6b, cols); }
        if (rows > 7u) { store_row8(o + 7u * p.ldc, s7a, s7b, cols); }
        if (rows > 8u) { store_row8(o + 8u * p.ldc, s8a, s8b, cols); }
        if (rows > 9u) { store_row8(o + 9u * p.ldc, s9a, s9b, cols); }
        if (rows > 10u) { store_row8(o + 10u * p.ldc, s10a, s10b, cols); }
        if (rows > 11u) { store_row8(o + 11u * p.ldc, s11a, s11b, cols); }
        if (rows > 12u) { store_row8(o + 12u * p.ldc, s12a, s12b, cols); }
        if (rows > 13u) { store_row8(o + 13u * p.ldc, s13a, s13b, cols); }
        if (rows > 14u) { store_row8(o + 14u * p.ldc, s14a, s14b, cols); }
        if (rows > 15u) { store_row8(o + 15u * p.ldc, s15a, s15b, cols); }
    }
}
