// Causal grouped-query attention, one workgroup per (query token, query head) of one sequence.
// q and out: rows of D, token stride q_tstride; k and v: one [S, D] block per kv head, stride
// kv_hstride. Workgroup w is local token w / heads and local head w % heads (global head
// h0 + w % heads, kv head (h0 + w % heads) / group, counted from kv0 in the k/v bindings); the
// query at local token tl sits at position pos + tl and sees keys 0 ..= pos + tl.
//
// Keys go in tiles of 256 with an online softmax (running max m and sum l, rescaled by
// exp(m_old - m_new) as the max grows), so the number of keys is not limited by workgroup
// memory. Per tile: thread j scores key j, then thread i < D folds the tile's p_j v_j[i].

struct Meta {
    heads: u32, group: u32, d: u32, q_tstride: u32,
    kv_hstride: u32, pos: u32, h0: u32, kv0: u32,
    q_off: u32, k_off: u32, v_off: u32, out_off: u32,
    scale: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
// Head dimensions up to 256: thread i owns output element i.
var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, 256>;
var<workgroup> red: array<f32, 256>;

// Reductions over the workgroup; every thread gets the result. The trailing barrier lets the
// next call reuse `red` once everyone has read it.
fn workgroup_max(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn workgroup_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256, 1, 1)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let tl = wg.x / p.heads;
    let hl = wg.x % p.heads;
    let kvh = (p.h0 + hl) / p.group - p.kv0;
    let q_base = p.q_off + tl * p.q_tstride + hl * p.d;
    let k_base = p.k_off + kvh * p.kv_hstride;
    let v_base = p.v_off + kvh * p.kv_hstride;
    let n_keys = p.pos + tl + 1u;

    if (lid < p.d) { qs[lid] = q[q_base + lid]; }
    workgroupBarrier();

    var m = 0.0;
    var l = 0.0;
    var acc = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += WG) {
        let j = t0 + lid;
        var s = bitcast<f32>(0xff800000u); // -inf: keys past the query's position
        if (j < n_keys) {
            var dot = 0.0;
            for (var i = 0u; i < p.d; i++) { dot = fma(qs[i], k[k_base + j * p.d + i], dot); }
            s = p.scale * dot;
        }
        // Every tile holds at least one visible key, so the maxima are finite.
        let tile_max = workgroup_max(lid, s);
        let m_new = select(tile_max, max(m, tile_max), t0 > 0u);
        let alpha = select(0.0, exp(m - m_new), t0 > 0u);
        let pj = select(0.0, exp(s - m_new), j < n_keys);
        probs[lid] = pj;
        // The sum's barriers also publish `probs` to the whole workgroup.
        l = l * alpha + workgroup_sum(lid, pj);
        if (lid < p.d) {
            var a = 0.0;
            let n = min(WG, n_keys - t0);
            for (var i = 0u; i < n; i++) { a = fma(probs[i], v[v_base + (t0 + i) * p.d + lid], a); }
            acc = acc * alpha + a;
        }
        m = m_new;
        // No barrier needed before the next tile's write to `probs`: it comes after the next
        // workgroup_max, which every thread reaches only once done reading this tile.
    }
    if (lid < p.d) { out[p.out_off + tl * p.q_tstride + hl * p.d + lid] = acc / l; }
}
