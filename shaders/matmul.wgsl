// Batched GEMM: C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b], row-major, f32.
//
// op(A) is M x K: A is stored M x K (row stride lda), or K x M when TRANS_A.
// op(B) is K x N: B is stored K x N (row stride ldb), or N x K when TRANS_B.
// Every operand is bound as array<vec4<f32>> so aligned data loads 16 bytes at once; unaligned
// data (odd leading dimensions or offsets, the host sets ALIGNED = false) is read element by
// element through the same binding. Offsets are in elements, relative to the binding.
// The parameters, bindings and loads come first, from shaders/matmul_common.wgsl
// (src/shaders.rs puts it before this file).
//
// Entry points:
//   matmul         the tuned kernel: 128 x 128 tile per workgroup of 16 x 16 threads, each
//                  thread accumulates an 8 x 8 block in registers; K advances 8 at a time
//                  through workgroup memory read as vec4.
//   matmul_rows32  the same scheme on a 32 x 128 tile (16 x 4 threads, 8 x 8 each), for
//                  products of a few dozen rows, where a 128-row tile would mostly idle.
//   matmul_pipelined  the tuned kernel's tiles with named accumulators and double-buffered
//                  workgroup tiles (the next K step's loads overlap this step's arithmetic).
//   matmul_tile32, matmul_tile64  a 32 x 32 (64 x 64) tile per workgroup of 8 x 8 (16 x 16)
//                  threads, each a 4 x 4 block in four named vec4 accumulators, K advancing
//                  16 at a time: for products of a hundred to a few thousand rows by a few
//                  hundred columns (a prefill, an edit's batch), too small to fill a GPU with
//                  128-row tiles but worth more work per thread than the 16 x 16 tile gives.
//   matmul_tile16  the baseline: a plain 16 x 16 shared-memory tile, one output per thread.

// How many of 4 elements starting at `start` lie below `end`.
fn valid4(start: u32, end: u32) -> u32 {
    return select(0u, min(4u, end - start), end > start);
}

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// Tiles in workgroup memory, [k][m] and [k][n], as vec4 along m and n: 32 vec4 per k in the
// 128-wide kernels (fewer in matmul_rows32's A tile and the 32- and 64-wide tiles).
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

// One vec4 of a tile in workgroup memory, index u: the A tile in As as [k][m], the B tile in
// Bs as [k][n], q vec4 along m (n) per k, a K step of 4·kq4 values. The kernels with 128-wide
// tiles take q = 32 and 8-value K steps (kq4 = 2), matmul_rows32's A tile q = 8, the 32- and
// 64-wide tiles q = 8 and 16 with 16-value K steps.
fn load_a(u: u32, k0: u32, m0: u32, abase: u32, q: u32, kq4: u32) {
    if (TRANS_A) {
        let kk = u / q;
        let mq = u % q;
        let m = m0 + mq * 4u;
        let k = k0 + kk;
        var v = vec4<f32>(0.0);
        if (k < p.k) { v = a4(abase + k * p.lda + m, valid4(m, p.m)); }
        As[kk * q + mq] = v;
    } else {
        let mm = u / kq4;
        let kq = u % kq4;
        let m = m0 + mm;
        let k = k0 + kq * 4u;
        var v = vec4<f32>(0.0);
        if (m < p.m) { v = a4(abase + m * p.lda + k, valid4(k, p.k)); }
        for (var i = 0u; i < 4u; i++) { As[(kq * 4u + i) * q + mm / 4u][mm % 4u] = v[i]; }
    }
}

fn load_b(u: u32, k0: u32, n0: u32, bbase: u32, q: u32, kq4: u32) {
    if (TRANS_B) {
        let nn = u / kq4;
        let kq = u % kq4;
        let n = n0 + nn;
        let k = k0 + kq * 4u;
        var v = vec4<f32>(0.0);
        if (n < p.n) { v = b4(bbase + n * p.ldb + k, valid4(k, p.k)); }
        for (var i = 0u; i < 4u; i++) { Bs[(kq * 4u + i) * q + nn / 4u][nn % 4u] = v[i]; }
    } else {
        let kk = u / q;
        let nq = u % q;
        let n = n0 + nq * 4u;
        let k = k0 + kk;
        var v = vec4<f32>(0.0);
        if (k < p.k) { v = b4(bbase + k * p.ldb + n, valid4(n, p.n)); }
        Bs[kk * q + nq] = v;
    }
}

// acc += a ⊗ b for a thread's 8 x 8 block: rows a0 (4) and a1 (4), columns b0 (4) and b1 (4).
fn fma_block(acc: ptr<function, array<vec4<f32>, 16>>, a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        (*acc)[r * 2u] = fma(vec4<f32>(a0[r]), b0, (*acc)[r * 2u]);
        (*acc)[r * 2u + 1u] = fma(vec4<f32>(a0[r]), b1, (*acc)[r * 2u + 1u]);
        (*acc)[8u + r * 2u] = fma(vec4<f32>(a1[r]), b0, (*acc)[8u + r * 2u]);
        (*acc)[8u + r * 2u + 1u] = fma(vec4<f32>(a1[r]), b1, (*acc)[8u + r * 2u + 1u]);
    }
}

// Four outputs of row m from column n on: one vec4 store where aligned and inside C.
fn store4(m: u32, n: u32, v: vec4<f32>, cbase: u32) {
    if (m >= p.m) { return; }
    let ci = cbase + m * p.ldc + n;
    if (ALIGNED && n + 4u <= p.n) {
        if (p.beta != 0.0) {
            c[ci >> 2u] = p.alpha * v + p.beta * c[ci >> 2u];
        } else {
            c[ci >> 2u] = p.alpha * v;
        }
    } else {
        for (var j = 0u; j < 4u; j++) {
            if (n + j < p.n) { store(ci + j, v[j]); }
        }
    }
}

// Writes a thread's block: rows m0 + ty*4 + r and m0 + half + ty*4 + r, columns n0 + tx*4 and
// n0 + 64 + tx*4.
fn store_block(acc: ptr<function, array<vec4<f32>, 16>>, m0: u32, half: u32, n0: u32, ty: u32, tx: u32, cbase: u32) {
    for (var r = 0u; r < 8u; r++) {
        let m = m0 + (r / 4u) * half + ty * 4u + (r % 4u);
        for (var g = 0u; g < 2u; g++) {
            store4(m, n0 + g * 64u + tx * 4u, (*acc)[r * 2u + g], cbase);
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;

    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Each of the 256 threads fills one vec4 of each tile.
        load_a(t, k0, m0, abase, 32u, 2u);
        load_b(t, k0, n0, bbase, 32u, 2u);
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            fma_block(&acc, As[kk * 32u + ty], As[kk * 32u + 16u + ty], Bs[kk * 32u + tx], Bs[kk * 32u + 16u + tx]);
        }
        workgroupBarrier();
    }

    store_block(&acc, m0, 64u, n0, ty, tx, cbase);
}

// matmul_pipelined: the tuned kernel's 128 x 128 tile and 8 x 8 block per thread, with the
// block's sixteen vec4 accumulators as named variables (no array a compiler might keep in
// memory) and two buffers per tile in workgroup memory: while the threads multiply out one
// K step from one buffer, the next step's operands are already on their way from global memory
// into registers, and go to the other buffer afterwards; one barrier per step.
var<workgroup> Ad: array<vec4<f32>, 512>;
var<workgroup> Bd: array<vec4<f32>, 512>;

// The vec4 of the A tile thread t loads for the K step at k0, in the order it was read.
fn fetch_a(t: u32, k0: u32, m0: u32, abase: u32) -> vec4<f32> {
    if (TRANS_A) {
        let m = m0 + (t % 32u) * 4u;
        let k = k0 + t / 32u;
        if (k < p.k) { return a4(abase + k * p.lda + m, valid4(m, p.m)); }
    } else {
        let m = m0 + t / 2u;
        let k = k0 + (t % 2u) * 4u;
        if (m < p.m) { return a4(abase + m * p.lda + k, valid4(k, p.k)); }
    }
    return vec4<f32>(0.0);
}

// Puts that vec4 into buffer `buf` of the A tile, [k][m] as vec4 along m (32 per k).
fn put_a(t: u32, v: vec4<f32>, buf: u32) {
    let base = buf * 256u;
    if (TRANS_A) {
        Ad[base + (t / 32u) * 32u + t % 32u] = v;
    } else {
        let mm = t / 2u;
        let kq = t % 2u;
        Ad[base + (kq * 4u) * 32u + mm / 4u][mm % 4u] = v.x;
        Ad[base + (kq * 4u + 1u) * 32u + mm / 4u][mm % 4u] = v.y;
        Ad[base + (kq * 4u + 2u) * 32u + mm / 4u][mm % 4u] = v.z;
        Ad[base + (kq * 4u + 3u) * 32u + mm / 4u][mm % 4u] = v.w;
    }
}

fn fetch_b(t: u32, k0: u32, n0: u32, bbase: u32) -> vec4<f32> {
    if (TRANS_B) {
        let n = n0 + t / 2u;
        let k = k0 + (t % 2u) * 4u;
        if (n < p.n) { return b4(bbase + n * p.ldb + k, valid4(k, p.k)); }
    } else {
        let n = n0 + (t % 32u) * 4u;
        let k = k0 + t / 32u;
        if (k < p.k) { return b4(bbase + k * p.ldb + n, valid4(n, p.n)); }
    }
    return vec4<f32>(0.0);
}

fn put_b(t: u32, v: vec4<f32>, buf: u32) {
    let base = buf * 256u;
    if (TRANS_B) {
        let nn = t / 2u;
        let kq = t % 2u;
        Bd[base + (kq * 4u) * 32u + nn / 4u][nn % 4u] = v.x;
        Bd[base + (kq * 4u + 1u) * 32u + nn / 4u][nn % 4u] = v.y;
        Bd[base + (kq * 4u + 2u) * 32u + nn / 4u][nn % 4u] = v.z;
        Bd[base + (kq * 4u + 3u) * 32u + nn / 4u][nn % 4u] = v.w;
    } else {
        Bd[base + (t / 32u) * 32u + t % 32u] = v;
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_pipelined(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;

    // r0..r3: rows ty*4 + 0..3 of the tile, r4..r7: rows 64 + ty*4 + 0..3; a: columns tx*4..,
    // b: columns 64 + tx*4...
    var r0a = vec4<f32>(0.0); var r0b = vec4<f32>(0.0);
    var r1a = vec4<f32>(0.0); var r1b = vec4<f32>(0.0);
    var r2a = vec4<f32>(0.0); var r2b = vec4<f32>(0.0);
    var r3a = vec4<f32>(0.0); var r3b = vec4<f32>(0.0);
    var r4a = vec4<f32>(0.0); var r4b = vec4<f32>(0.0);
    var r5a = vec4<f32>(0.0); var r5b = vec4<f32>(0.0);
    var r6a = vec4<f32>(0.0); var r6b = vec4<f32>(0.0);
    var r7a = vec4<f32>(0.0); var r7b = vec4<f32>(0.0);

    var va = fetch_a(t, 0u, m0, abase);
    var vb = fetch_b(t, 0u, n0, bbase);
    put_a(t, va, 0u);
    put_b(t, vb, 0u);
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let more = k0 + BK < p.k;
        if (more) {
            va = fetch_a(t, k0 + BK, m0, abase);
            vb = fetch_b(t, k0 + BK, n0, bbase);
        }
        let base = buf * 256u;
        for (var kk = 0u; kk < BK; kk++) {
            let row = base + kk * 32u;
            let a0 = Ad[row + ty];
            let a1 = Ad[row + 16u + ty];
            let b0 = Bd[row + tx];
            let b1 = Bd[row + 16u + tx];
            r0a = fma(vec4<f32>(a0.x), b0, r0a); r0b = fma(vec4<f32>(a0.x), b1, r0b);
            r1a = fma(vec4<f32>(a0.y), b0, r1a); r1b = fma(vec4<f32>(a0.y), b1, r1b);
            r2a = fma(vec4<f32>(a0.z), b0, r2a); r2b = fma(vec4<f32>(a0.z), b1, r2b);
            r3a = fma(vec4<f32>(a0.w), b0, r3a); r3b = fma(vec4<f32>(a0.w), b1, r3b);
            r4a = fma(vec4<f32>(a1.x), b0, r4a); r4b = fma(vec4<f32>(a1.x), b1, r4b);
            r5a = fma(vec4<f32>(a1.y), b0, r5a); r5b = fma(vec4<f32>(a1.y), b1, r5b);
            r6a = fma(vec4<f32>(a1.z), b0, r6a); r6b = fma(vec4<f32>(a1.z), b1, r6b);
            r7a = fma(vec4<f32>(a1.w), b0, r7a); r7b = fma(vec4<f32>(a1.w), b1, r7b);
        }
        if (more) {
            put_a(t, va, 1u - buf);
            put_b(t, vb, 1u - buf);
        }
        workgroupBarrier();
        buf = 1u - buf;
    }

    let top = m0 + ty * 4u;
    let bottom = m0 + 64u + ty * 4u;
    let na = n0 + tx * 4u;
    let nb = n0 + 64u + tx * 4u;
    store4(top, na, r0a, cbase); store4(top, nb, r0b, cbase);
    store4(top + 1u, na, r1a, cbase); store4(top + 1u, nb, r1b, cbase);
    store4(top + 2u, na, r2a, cbase); store4(top + 2u, nb, r2b, cbase);
    store4(top + 3u, na, r3a, cbase); store4(top + 3u, nb, r3b, cbase);
    store4(bottom, na, r4a, cbase); store4(bottom, nb, r4b, cbase);
    store4(bottom + 1u, na, r5a, cbase); store4(bottom + 1u, nb, r5b, cbase);
    store4(bottom + 2u, na, r6a, cbase); store4(bottom + 2u, nb, r6b, cbase);
    store4(bottom + 3u, na, r7a, cbase); store4(bottom + 3u, nb, r7b, cbase);
}

@compute @workgroup_size(16, 4, 1)
fn matmul_rows32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let m0 = wg.y * 32u;
    let n0 = wg.x * BN;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;

    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 64 threads: one vec4 of the A tile each (8 per k: the first 64 of As), four of the
        // B tile.
        load_a(t, k0, m0, abase, 8u, 2u);
        for (var j = 0u; j < 4u; j++) { load_b(t + 64u * j, k0, n0, bbase, 32u, 2u); }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            fma_block(&acc, As[kk * 8u + ty], As[kk * 8u + 4u + ty], Bs[kk * 32u + tx], Bs[kk * 32u + 16u + tx]);
        }
        workgroupBarrier();
    }

    store_block(&acc, m0, 16u, n0, ty, tx, cbase);
}

// matmul_tile32 and matmul_tile64: a T x T tile (T = 32 or 64) per workgroup of T/4 x T/4
// threads, each a 4 x 4 block in four named vec4 accumulators; K advances 16 at a time. The
// tiles in workgroup memory are the 128-wide kernels' As and Bs with T/4 vec4 per k (T = 64
// fills them; T = 32 uses half).

fn tile_square(wg: vec3<u32>, lid: vec3<u32>, tile: u32) {
    let q = tile / 4u;
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * q + tx;
    let m0 = wg.y * tile;
    let n0 = wg.x * tile;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        // q * q threads, 16 * q vec4 per tile: 64 / tile of each tile per thread.
        for (var u = t; u < 16u * q; u += q * q) {
            load_a(u, k0, m0, abase, q, 4u);
            load_b(u, k0, n0, bbase, q, 4u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let av = As[kk * q + ty];
            let bv = Bs[kk * q + tx];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    let m = m0 + ty * 4u;
    let n = n0 + tx * 4u;
    store4(m, n, acc0, cbase);
    store4(m + 1u, n, acc1, cbase);
    store4(m + 2u, n, acc2, cbase);
    store4(m + 3u, n, acc3, cbase);
}

@compute @workgroup_size(8, 8, 1)
fn matmul_tile32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_square(wg, lid, 32u);
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tile64(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile_square(wg, lid, 64u);
}

var<workgroup> As16: array<f32, 256>;
var<workgroup> Bs16: array<f32, 256>;

@compute @workgroup_size(16, 16, 1)
fn matmul_tile16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * 16u + lid.y;
    let col = wg.x * 16u + lid.x;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        let ka = k0 + lid.x;
        var av = 0.0;
        if (row < p.m && ka < p.k) {
            if (TRANS_A) { av = a_at(abase + ka * p.lda + row); } else { av = a_at(abase + row * p.lda + ka); }
        }
        As16[lid.y * 16u + lid.x] = av;
        let kb = k0 + lid.y;
        var bv = 0.0;
        if (kb < p.k && col < p.n) {
            if (TRANS_B) { bv = b_at(bbase + col * p.ldb + kb); } else { bv = b_at(bbase + kb * p.ldb + col); }
        }
        Bs16[lid.y * 16u + lid.x] = bv;
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            acc = fma(As16[lid.y * 16u + kk], Bs16[kk * 16u + lid.x], acc);
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        store(cbase + row * p.ldc + col, acc);
    }
}

// One output element per workgroup: 64 threads split K and reduce. For products with very few
// rows (a decode step multiplies one token by every weight matrix), where a 128-row tile would
// compute 127 rows for nothing.
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn matmul_dot(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = wg.x;
    let m = wg.y;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    var acc = 0.0;
    for (var k = lid.x; k < p.k; k += 64u) {
        var av: f32;
        var bv: f32;
        if (TRANS_A) { av = a_at(abase + k * p.lda + m); } else { av = a_at(abase + m * p.lda + k); }
        if (TRANS_B) { bv = b_at(bbase + n * p.ldb + k); } else { bv = b_at(bbase + k * p.ldb + n); }
        acc = fma(av, bv, acc);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { store(cbase + m * p.ldc + n, red[0]); }
}

// One thread per output column, up to 4 rows of op(A) per workgroup row, no workgroup memory
// and no barriers: each thread walks K alone, four values at a time, with one named vec4
// accumulator per row. For decode-sized products; on adapters that run a workgroup as one CPU
// thread (lavapipe) it avoids matmul_dot's barrier per reduction step, and on GPUs the
// autotune decides between the two per shape.
fn gemv_b4(base: u32, n: u32, k: u32, valid: u32) -> vec4<f32> {
    if (TRANS_B) { return b4(base + n * p.ldb + k, valid); }
    var v = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) {
        if (t < valid) { v[t] = b_at(base + (k + t) * p.ldb + n); }
    }
    return v;
}

@compute @workgroup_size(64, 1, 1)
fn matmul_gemv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let n = gid.x;
    let m0 = wg.y * 4u;
    if (n >= p.n || m0 >= p.m) { return; }
    let rows = min(4u, p.m - m0);
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var k = 0u;
    if (ALIGNED && TRANS_B && !TRANS_A) {
        // The common case (x · Wᵀ) as straight vec4 loads: no per-element fallback for the
        // compiler to keep beside them.
        let ws = (bbase + n * p.ldb) >> 2u;
        let xs = (abase + m0 * p.lda) >> 2u;
        let lda4 = p.lda >> 2u;
        let k4 = p.k >> 2u;
        for (var q = 0u; q < k4; q++) {
            let w = b[ws + q];
            acc0 = fma(a[xs + q], w, acc0);
            if (rows > 1u) { acc1 = fma(a[xs + lda4 + q], w, acc1); }
            if (rows > 2u) { acc2 = fma(a[xs + 2u * lda4 + q], w, acc2); }
            if (rows > 3u) { acc3 = fma(a[xs + 3u * lda4 + q], w, acc3); }
        }
        k = k4 * 4u;
    }
    for (; k < p.k; k += 4u) {
        let valid = min(4u, p.k - k);
        let w = gemv_b4(bbase, n, k, valid);
        acc0 = fma(op_a4(abase, m0, k, valid), w, acc0);
        if (rows > 1u) { acc1 = fma(op_a4(abase, m0 + 1u, k, valid), w, acc1); }
        if (rows > 2u) { acc2 = fma(op_a4(abase, m0 + 2u, k, valid), w, acc2); }
        if (rows > 3u) { acc3 = fma(op_a4(abase, m0 + 3u, k, valid), w, acc3); }
    }
    let ones = vec4<f32>(1.0);
    store(cbase + m0 * p.ldc + n, dot(acc0, ones));
    if (rows > 1u) { store(cbase + (m0 + 1u) * p.ldc + n, dot(acc1, ones)); }
    if (rows > 2u) { store(cbase + (m0 + 2u) * p.ldc + n, dot(acc2, ones)); }
    if (rows > 3u) { store(cbase + (m0 + 3u) * p.ldc + n, dot(acc3, ones)); }
}

// Each thread a ROWS x 16 block of C, no workgroup memory, no barriers, and no load whose
// address depends on anything but the thread: per four steps of K it loads ROWS + 16 vec4s
// (a block stored the other way round is turned over in registers) for 64·ROWS multiply-adds.
// For adapters where a load costs far more than arithmetic: llvmpipe runs a load lane by lane
// in a loop, whatever its width, so its speed is set by load instructions per multiply-add
// (gemv: one per two; here 0.05 at eight rows). Each output keeps one running sum, to which a
// four-step dot product is added at a time (`x * w`: component j is dot(x, w[j])), so that 128
// outputs take the registers 32 took with a partial sum per step. Rows and columns past the
// edge load a clamped, in-range neighbour and are never stored; only the K tail is zeroed.
override ROWS: u32 = 4u;

// x[i] = op(A)[m0 + first + i, k..k+3] for the block's rows first..first+3, of which `rows`
// (counted from m0) exist.
fn block_x(abase: u32, k: u32, valid: u32, m0: u32, first: u32, rows: u32) -> mat4x4<f32> {
    var x = mat4x4<f32>();
    if (TRANS_A) {
        let have = select(0u, min(rows - first, 4u), rows > first);
        for (var s = 0u; s < 4u; s++) {
            let row = abase + (k + min(s, valid - 1u)) * p.lda + m0 + first;
            x[s] = select(vec4<f32>(0.0), a4(row, have), s < valid);
        }
        return transpose(x);
    }
    for (var i = 0u; i < min(ROWS, 4u); i++) {
        x[i] = a4(abase + (m0 + min(first + i, rows - 1u)) * p.lda + k, valid);
    }
    return x;
}

// One row of the block: the first `cols` of its 16 outputs, starting at o.
fn store_block_row(o: u32, q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>, cols: u32) {
    for (var j = 0u; j < 4u; j++) {
        if (j < cols) { store(o + j, q0[j]); }
        if (j + 4u < cols) { store(o + 4u + j, q1[j]); }
        if (j + 8u < cols) { store(o + 8u + j, q2[j]); }
        if (j + 12u < cols) { store(o + 12u + j, q3[j]); }
    }
}

@compute @workgroup_size(16, 1, 1)
fn matmul_block(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n0 = gid.x * 16u;
    let m0 = gid.y * ROWS;
    if (n0 >= p.n || m0 >= p.m) { return; }
    let rows = min(ROWS, p.m - m0);
    let cols = min(16u, p.n - n0);
    let abase = p.a_off + gid.z * p.a_bstride;
    let bbase = p.b_off + gid.z * p.b_bstride;
    let cbase = p.c_off + gid.z * p.c_bstride;
    // s{i}{q}[j]: output (m0 + i, n0 + 4q + j).
    var s00 = vec4<f32>(); var s01 = vec4<f32>(); var s02 = vec4<f32>(); var s03 = vec4<f32>();
    var s10 = vec4<f32>(); var s11 = vec4<f32>(); var s12 = vec4<f32>(); var s13 = vec4<f32>();
    var s20 = vec4<f32>(); var s21 = vec4<f32>(); var s22 = vec4<f32>(); var s23 = vec4<f32>();
    var s30 = vec4<f32>(); var s31 = vec4<f32>(); var s32 = vec4<f32>(); var s33 = vec4<f32>();
    var s40 = vec4<f32>(); var s41 = vec4<f32>(); var s42 = vec4<f32>(); var s43 = vec4<f32>();
    var s50 = vec4<f32>(); var s51 = vec4<f32>(); var s52 = vec4<f32>(); var s53 = vec4<f32>();
    var s60 = vec4<f32>(); var s61 = vec4<f32>(); var s62 = vec4<f32>(); var s63 = vec4<f32>();
    var s70 = vec4<f32>(); var s71 = vec4<f32>(); var s72 = vec4<f32>(); var s73 = vec4<f32>();
    for (var k = 0u; k < p.k; k += 4u) {
        let valid = min(4u, p.k - k);
        let x = block_x(abase, k, valid, m0, 0u, rows);
        var y = mat4x4<f32>();
        if (ROWS > 4u) { y = block_x(abase, k, valid, m0, 4u, rows); }
        let w0 = block_w(bbase, k, valid, n0, 0u, cols);
        let w1 = block_w(bbase, k, valid, n0, 1u, cols);
        let w2 = block_w(bbase, k, valid, n0, 2u, cols);
        let w3 = block_w(bbase, k, valid, n0, 3u, cols);
        s00 += x[0] * w0; s01 += x[0] * w1; s02 += x[0] * w2; s03 += x[0] * w3;
        if (ROWS > 1u) { s10 += x[1] * w0; s11 += x[1] * w1; s12 += x[1] * w2; s13 += x[1] * w3; }
        if (ROWS > 2u) {
            s20 += x[2] * w0; s21 += x[2] * w1; s22 += x[2] * w2; s23 += x[2] * w3;
            s30 += x[3] * w0; s31 += x[3] * w1; s32 += x[3] * w2; s33 += x[3] * w3;
        }
        if (ROWS > 4u) {
            s40 += y[0] * w0; s41 += y[0] * w1; s42 += y[0] * w2; s43 += y[0] * w3;
            s50 += y[1] * w0; s51 += y[1] * w1; s52 += y[1] * w2; s53 += y[1] * w3;
            s60 += y[2] * w0; s61 += y[2] * w1; s62 += y[2] * w2; s63 += y[2] * w3;
            s70 += y[3] * w0; s71 += y[3] * w1; s72 += y[3] * w2; s73 += y[3] * w3;
        }
    }
    let o = cbase + m0 * p.ldc + n0;
    store_block_row(o, s00, s01, s02, s03, cols);
    if (rows > 1u) { store_block_row(o + p.ldc, s10, s11, s12, s13, cols); }
    if (rows > 2u) { store_block_row(o + 2u * p.ldc, s20, s21, s22, s23, cols); }
    if (rows > 3u) { store_block_row(o + 3u * p.ldc, s30, s31, s32, s33, cols); }
    if (rows > 4u) { store_block_row(o + 4u * p.ldc, s40, s41, s42, s43, cols); }
    if (rows > 5u) { store_block_row(o + 5u * p.ldc, s50, s51, s52, s53, cols); }
    if (rows > 6u) { store_block_row(o + 6u * p.ldc, s60, s61, s62, s63, cols); }
    if (rows > 7u) { store_block_row(o + 7u * p.ldc, s70, s71, s72, s73, cols); }
}
