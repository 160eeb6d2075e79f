// Batched GEMM for software adapters with subgroups (`Kernel::Lanes`), after the prelude
// shaders/matmul_common.wgsl (the layout, parameters and loads of every matmul kernel). Its own
// file because a module that uses subgroup built-ins builds only on a device with subgroups;
// the host runs it only where they are exactly 8 wide (lavapipe on AVX2), so that its
// workgroup of 8 is one subgroup and lane i holds what lane i loaded.
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

// Eight rows of op(A), four steps of K each: rows 0..3 in lo, 4..7 in hi (row i in column i).
struct Rows8 { lo: mat4x4<f32>, hi: mat4x4<f32> }

// The subgroup's eight loads of `t` (lane i's in column i), as rows: each lane's load is one
// row (A stored M x K), or four lanes' loads are four steps of K for four rows (A stored
// K x M: lane i holds step i % 4 of rows 4·(i / 4)..).
fn rows_of(t: vec4<f32>) -> Rows8 {
    let lo = mat4x4<f32>(subgroupBroadcast(t, 0u), subgroupBroadcast(t, 1u), subgroupBroadcast(t, 2u), subgroupBroadcast(t, 3u));
    let hi = mat4x4<f32>(subgroupBroadcast(t, 4u), subgroupBroadcast(t, 5u), subgroupBroadcast(t, 6u), subgroupBroadcast(t, 7u));
    if (TRANS_A) { return Rows8(transpose(lo), transpose(hi)); }
    return Rows8(lo, hi);
}

// What this lane loads of op(A)'s rows first..first+7 (of `rows` from m0) at K step k.
fn lane_load(abase: u32, k: u32, valid: u32, m0: u32, first: u32, rows: u32, lane: u32) -> vec4<f32> {
    if (TRANS_A) {
        let s = lane % 4u;
        let r0 = first + 4u * (lane / 4u);
        let have = select(0u, min(rows - r0, 4u), rows > r0);
        return select(vec4<f32>(0.0), a4(abase + (k + min(s, valid - 1u)) * p.lda + m0 + r0, have), s < valid);
    }
    return a4(abase + (m0 + min(first + lane, rows - 1u)) * p.lda + k, valid);
}

// One row of the block: the first `cols` of its 8 outputs, starting at o.
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
    // Where this lane reads: its own block, or the last one past the edge.
    let nl = min(n0, ((p.n - 1u) / 8u) * 8u);
    let cols = min(8u, p.n - nl);
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    // s{i}{h}[j]: output (m0 + i, n0 + 4h + j), h = a, b.
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
        let x = rows_of(lane_load(abase, k, valid, m0, 0u, rows, lane));
        let y = rows_of(lane_load(abase, k, valid, m0, 8u, rows, lane));
        s0a += x.lo[0] * w0; s0b += x.lo[0] * w1;
        s1a += x.lo[1] * w0; s1b += x.lo[1] * w1;
        s2a += x.lo[2] * w0; s2b += x.lo[2] * w1;
        s3a += x.lo[3] * w0; s3b += x.lo[3] * w1;
        s4a += x.hi[0] * w0; s4b += x.hi[0] * w1;
        s5a += x.hi[1] * w0; s5b += x.hi[1] * w1;
        s6a += x.hi[2] * w0; s6b += x.hi[2] * w1;
        s7a += x.hi[3] * w0; s7b += x.hi[3] * w1;
        s8a += y.lo[0] * w0; s8b += y.lo[0] * w1;
        s9a += y.lo[1] * w0; s9b += y.lo[1] * w1;
        s10a += y.lo[2] * w0; s10b += y.lo[2] * w1;
        s11a += y.lo[3] * w0; s11b += y.lo[3] * w1;
        s12a += y.hi[0] * w0; s12b += y.hi[0] * w1;
        s13a += y.hi[1] * w0; s13b += y.hi[1] * w1;
        s14a += y.hi[2] * w0; s14b += y.hi[2] * w1;
        s15a += y.hi[3] * w0; s15b += y.hi[3] * w1;
    }
    if (n0 < p.n) {
        let o = cbase + m0 * p.ldc + n0;
        store_row8(o, s0a, s0b, cols);
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

// matmul_dot_lanes: products of a few rows (decoding), the subgroup splitting K. A workgroup
// computes up to DOT_ROWS rows x 8 columns; per 32 steps of K, lane i takes steps 4i..4i+3 of
// every row and column, so the subgroup reads each row of op(B) (B stored N x K: a row of W)
// as one run of 128 bytes after another, and a subgroupAdd ends each sum. The block kernel's
// one-row decode product instead has each lane stream 16 rows of W at once (128 per subgroup),
// which a CPU's prefetchers do not follow.
override DOT_ROWS: u32 = 1u;

@compute @workgroup_size(8, 1, 1)
fn matmul_dot_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wg.y * DOT_ROWS;
    let rows = min(DOT_ROWS, p.m - m0);
    let n0 = wg.x * 8u;
    let cols = min(8u, p.n - n0);
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    // Rows past the last one read it again (their sums are not stored).
    let last = p.m - 1u;
    // s{i}{h}[j]: this lane's part of output (m0 + i, n0 + 4h + j), h = a, b.
    var s0a = vec4<f32>(); var s0b = vec4<f32>();
    var s1a = vec4<f32>(); var s1b = vec4<f32>();
    var s2a = vec4<f32>(); var s2b = vec4<f32>();
    var s3a = vec4<f32>(); var s3b = vec4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        let k = k0 + 4u * lane;
        if (k < p.k) {
            let valid = min(4u, p.k - k);
            let w0 = block_w(bbase, k, valid, n0, 0u, cols);
            let w1 = block_w(bbase, k, valid, n0, 1u, cols);
            let x0 = op_a4(abase, m0, k, valid);
            s0a += x0 * w0; s0b += x0 * w1;
            if (DOT_ROWS > 1u) {
                let x1 = op_a4(abase, min(m0 + 1u, last), k, valid);
                s1a += x1 * w0; s1b += x1 * w1;
            }
            if (DOT_ROWS > 2u) {
                let x2 = op_a4(abase, min(m0 + 2u, last), k, valid);
                let x3 = op_a4(abase, min(m0 + 3u, last), k, valid);
                s2a += x2 * w0; s2b += x2 * w1;
                s3a += x3 * w0; s3b += x3 * w1;
            }
        }
    }
    let o = cbase + m0 * p.ldc + n0;
    let t0a = subgroupAdd(s0a); let t0b = subgroupAdd(s0b);
    if (lane == 0u) { store_row8(o, t0a, t0b, cols); }
    if (DOT_ROWS > 1u) {
        let t1a = subgroupAdd(s1a); let t1b = subgroupAdd(s1b);
        if (lane == 0u && rows > 1u) { store_row8(o + p.ldc, t1a, t1b, cols); }
    }
    if (DOT_ROWS > 2u) {
        let t2a = subgroupAdd(s2a); let t2b = subgroupAdd(s2b);
        let t3a = subgroupAdd(s3a); let t3b = subgroupAdd(s3b);
        if (lane == 0u && rows > 2u) { store_row8(o + 2u * p.ldc, t2a, t2b, cols); }
        if (lane == 0u && rows > 3u) { store_row8(o + 3u * p.ldc, t3a, t3b, cols); }
    }
}
