// Batched GEMM on cooperative matrices (tensor cores, simdgroup matrices): C[b] = alpha *
// op(A[b]) * op(B[b]) + beta * C[b], row-major, the layout and parameters of
// shaders/matmul.wgsl. An optional path (src/ops/matmul.rs `Kernel::Coop`), off by default:
// the operands are rounded to f16 on their way into workgroup memory and the products
// accumulate in f32, so it trades accuracy (about 1e-3 relative per operand) for speed; the
// benchmark reports its error next to its speed. Operands must lie in f16's range: past 65504
// an operand becomes ∞ and its products ∞ or NaN (the activations and weights of an edit are
// far inside it; a caller with other data keeps the f32 kernels). Its own file because
// `enable f16` and `enable wgpu_cooperative_matrix` apply to a whole module and only devices
// with both features and 16 × 16 f16 matrices can build it: Vulkan with
// VK_KHR_cooperative_matrix (Metal's simdgroup matrices are 8 × 8, which this kernel does not
// use), and subgroups (the built-ins subgroup_id and subgroup_invocation_id say which quadrant
// an invocation works on, rather than assuming a driver groups invocations 32 by 32 in order).
// It still needs the four subgroups full (subgroup_id < 4): the host runs it only where the
// subgroup size is exactly 32, which with 128 invocations gives four.
//
//   matmul_coop  A 64 × 64 tile of C per workgroup of 128 threads: four subgroups of 32 (the
//                host uses it only where subgroups are exactly 32 wide), each owning a 32 × 32
//                quadrant as 2 × 2 f32 accumulators of 16 × 16. K advances 16 at a time: the
//                workgroup loads op(A)'s 64 × 16 and op(B)'s 16 × 64 slices into workgroup
//                memory as f16 (zero outside the matrix), then each subgroup multiplies its two
//                A and two B fragments. The result leaves through a 16 × 16 staging tile per
//                subgroup, so edges, alpha and beta are handled element by element.

enable f16;
enable wgpu_cooperative_matrix;

struct Meta {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, _pad0: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad1: u32,
    a_bstride: u32, b_bstride: u32, c_bstride: u32, _pad2: u32,
    alpha: f32, beta: f32, _pad3: u32, _pad4: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// op(A)'s slice, [m][k] (64 × 16); op(B)'s, [k][n] (16 × 64); one 16 × 16 f32 staging tile per
// subgroup.
var<workgroup> at: array<f16, 1024>;
var<workgroup> bt: array<f16, 1024>;
var<workgroup> stage: array<f32, 1024>;

// Writes the accumulator `acc` of subgroup `sg` (lane `lane`) to C at (m0, n0): through the
// staging tile, 8 elements per lane, inside the matrix only.
fn store_fragment(acc: coop_mat16x16<f32, C>, sg: u32, lane: u32, m0: u32, n0: u32, cbase: u32) {
    coopStoreT(acc, &stage[sg * 256u], 16u);
    workgroupBarrier();
    let r = lane / 2u;
    for (var j = 0u; j < 8u; j++) {
        let col = (lane % 2u) * 8u + j;
        let m = m0 + r;
        let n = n0 + col;
        if (m < p.m && n < p.n) {
            let v = stage[sg * 256u + r * 16u + col];
            let ci = cbase + m * p.ldc + n;
            if (p.beta != 0.0) {
                c[ci] = p.alpha * v + p.beta * c[ci];
            } else {
                c[ci] = p.alpha * v;
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(128, 1, 1)
fn matmul_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    let abase = p.a_off + wg.z * p.a_bstride;
    let bbase = p.b_off + wg.z * p.b_bstride;
    let cbase = p.c_off + wg.z * p.c_bstride;
    // The subgroup's quadrant: rows qm..qm+32 and columns qn..qn+32 of the tile.
    let qm = (sg / 2u) * 32u;
    let qn = (sg % 2u) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = t; e < TM * TK; e += 128u) {
            let i = e / TK;
            let kk = e % TK;
            let m = m0 + i;
            let k = k0 + kk;
            var v = 0.0;
            if (m < p.m && k < p.k) {
                if (TRANS_A) { v = a[abase + k * p.lda + m]; } else { v = a[abase + m * p.lda + k]; }
            }
            at[e] = f16(v);
        }
        for (var e = t; e < TK * TN; e += 128u) {
            let kk = e / TN;
            let j = e % TN;
            let k = k0 + kk;
            let n = n0 + j;
            var v = 0.0;
            if (k < p.k && n < p.n) {
                if (TRANS_B) { v = b[bbase + n * p.ldb + k]; } else { v = b[bbase + k * p.ldb + n]; }
            }
            bt[e] = f16(v);
        }
        workgroupBarrier();
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&at[qm * TK], TK);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&at[(qm + 16u) * TK], TK);
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&bt[qn], TN);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&bt[qn + 16u], TN);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
        workgroupBarrier();
    }
    store_fragment(c00, sg, lane, m0 + qm, n0 + qn, cbase);
    store_fragment(c01, sg, lane, m0 + qm, n0 + qn + 16u, cbase);
    store_fragment(c10, sg, lane, m0 + qm + 16u, n0 + qn, cbase);
    store_fragment(c11, sg, lane, m0 + qm + 16u, n0 + qn + 16u, cbase);
}
