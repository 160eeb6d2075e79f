// The prelude of the attention shaders (shaders/attention.wgsl, shaders/attention_lanes.wgsl):
// src/shaders.rs puts it before each, since WGSL has no include. The forward kernels' layout:
// q and out hold rows of D (a query head of a token), token stride q_tstride, sequence stride
// q_bstride; k and v one [S, D] block per kv head, stride kv_hstride, sequence stride
// kv_bstride; offsets in elements, relative to the binding. The backward kernels take
// `BwdMeta` (binding 0 as `pb`) and bind dO, the per-row statistics and the gradients after q,
// k and v.

struct Meta {
    heads: u32, group: u32, d: u32, q_tstride: u32,
    kv_hstride: u32, pos: u32, h0: u32, kv0: u32,
    q_off: u32, k_off: u32, v_off: u32, out_off: u32,
    scale: f32, q_bstride: u32, kv_bstride: u32, tokens: u32,
    // Where `pos` is EACH, sequence z of the dispatch (one query token each) sits at position
    // each[z / 4][z % 4], z < 16: sequences decoded together after prompts of different lengths.
    each: array<vec4<u32>, 4>,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const EACH: u32 = 0xffffffffu;

// The position of sequence z's first query token in a forward dispatch.
fn seq_pos(z: u32) -> u32 {
    // Not a select: that would read each[] for every z, past its 16 where the dispatch holds
    // more sequences at one position.
    if (p.pos == EACH) { return p.each[z / 4u][z % 4u]; }
    return p.pos;
}

// Where row ρ (token ρ / group, head ρ % group of a kv group) starts, from the group's first.
fn row_offset(rho: u32, group: u32, q_tstride: u32, d: u32) -> u32 {
    return (rho / group) * q_tstride + (rho % group) * d;
}

// The backward's parameters: q, dout and dq share a layout, as do k and v; dk and dv are
// token-major, rows o_tstride apart.
struct BwdMeta {
    group: u32, d: u32, q_tstride: u32, o_tstride: u32,
    pos: u32, t_count: u32, t_first: u32, j0: u32,
    q_off: u32, k_off: u32, v_off: u32, do_off: u32,
    st_off: u32, a_off: u32, b_off: u32, scale: f32,
    // Per sequence (wg.z) and per kv group (wg.y): q/dout/dq, k/v, stats, dk/dv.
    q_bs: u32, kv_bs: u32, st_bs: u32, o_bs: u32,
    q_gs: u32, kv_gs: u32, st_gs: u32, o_gs: u32,
}

// The offsets of one (sequence, kv group) workgroup's rows in each binding.
struct Offsets { q: u32, dout: u32, k: u32, v: u32, st: u32, a: u32, b: u32 }

fn offsets(wg: vec3<u32>, out_q_layout: bool) -> Offsets {
    let sq = wg.z * pb.q_bs + wg.y * pb.q_gs;
    let skv = wg.z * pb.kv_bs + wg.y * pb.kv_gs;
    let so = wg.z * pb.o_bs + wg.y * pb.o_gs;
    var o: Offsets;
    o.q = pb.q_off + sq;
    o.dout = pb.do_off + sq;
    o.k = pb.k_off + skv;
    o.v = pb.v_off + skv;
    o.st = pb.st_off + wg.z * pb.st_bs + wg.y * pb.st_gs;
    o.a = pb.a_off + select(so, sq, out_q_layout);
    o.b = pb.b_off + so;
    return o;
}

@group(0) @binding(0) var<uniform> pb: BwdMeta;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats_w: array<f32>;
@group(0) @binding(5) var<storage, read> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_a: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad_b: array<f32>;
