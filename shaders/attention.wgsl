// Causal grouped-query attention, forward and backward, after the prelude
// shaders/attention_common.wgsl (the forward's parameters, bindings and layout).
//
// The per-query forward: one workgroup per (query token, query head) of a sequence;
// workgroup row wg.y is the sequence, q_bstride and kv_bstride apart in q/out and k/v (several
// sequences in one dispatch: an edit's batch of prompts). q and out: rows of D, token stride
// q_tstride; k and v: one [S, D] block per kv head, stride kv_hstride. Workgroup w is local
// token w / heads and local head w % heads (global head h0 + w % heads, kv head
// (h0 + w % heads) / group, counted from kv0 in the k/v bindings); the query at local token tl
// sits at position pos + tl and sees keys 0 ..= pos + tl (pos: the sequence's, `seq_pos`).
//
// Keys go in tiles of 256 with an online softmax (running max m and sum l, rescaled by
// exp(m_old - m_new) as the max grows), so the number of keys is not limited by workgroup
// memory. Per tile: thread j scores key j, then thread i < D folds the tile's p_j v_j[i].

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
    let q_row = wg.y * p.q_bstride + tl * p.q_tstride + hl * p.d;
    let q_base = p.q_off + q_row;
    let k_base = p.k_off + wg.y * p.kv_bstride + kvh * p.kv_hstride;
    let v_base = p.v_off + wg.y * p.kv_bstride + kvh * p.kv_hstride;
    let n_keys = seq_pos(wg.y) + tl + 1u;

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
        let alpha = select(0.0, exp(min(m - m_new, 0.0)), t0 > 0u); // no overflow at t0 = 0, where m is not a max yet
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
    if (lid < p.d) { out[p.out_off + q_row + lid] = acc / l; }
}

// ---- Query-tiled forward ---------------------------------------------------------------------
// For prefills, where the kernel above would read every key once per (query, head): a workgroup
// takes TR query rows of one kv head of one sequence and reads each key once for all of them.
// Workgroup x is the tile, y the kv head (every query head of the sequence is in the dispatch:
// h0 = kv0 = 0), z the sequence. Row ρ of a kv head is (local token ρ / group, query head
// y·group + ρ % group), ρ < tokens·group. Keys go in tiles of TK, loaded into workgroup memory
// with coalesced reads; thread (r, c) = (lid / TK, lid % TK) scores key c of the tile for row r
// and owns output elements c, c + 16, c + 32 and c + 48 of row r (head dimension ≤ TD). Each
// row keeps an online softmax (max m, sum l), the same in its TK threads.
//
// The tiled kernels (this one and the backward's below) share four 4 KiB tiles — the 16 KiB
// every adapter offers. Tiles read along the head dimension by TK threads at once are held
// transposed ([dim][key or row]) and swizzled (element (i, j) at i·TK + (j ^ ((i >> 1) & 15)))
// so that both those reads and the reads of one key's or row's dims c, c + 16, … by the TK
// threads of a row hit distinct banks. A tile's scores replace its keys once they are read.

const TR: u32 = 16u;
const TK: u32 = 16u;
const TD: u32 = 64u;

var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;
var<workgroup> tile_kt: array<f32, 1024>;
var<workgroup> tile_c: array<f32, 1024>;

fn kt_at(i: u32, j: u32) -> u32 {
    return i * TK + (j ^ ((i >> 1u) & 15u));
}

// Keys the rows rho0 .. rho0 + TR (of `rows`) see together: up to the last row's position.
fn tile_keys(pos: u32, rho0: u32, rows: u32, group: u32) -> u32 {
    return pos + (min(rho0 + TR, rows) - 1u) / group + 1u;
}

// The row's running maximum over the visible scores of a key tile (in tile_kt[r·TK + j]), and
// the factor exp(m - m_new) that rescales what it has summed. Only visible keys enter, so no
// infinity is ever formed: key 0 (the first tile) is visible to every row.
fn online_max(r: u32, n_vis: u32, t0: u32, m: f32) -> vec2<f32> {
    var m_new = select(m, tile_kt[r * TK], t0 == 0u);
    for (var j = 0u; j < n_vis; j++) { m_new = max(m_new, tile_kt[r * TK + j]); }
    // At t0 = 0 there is nothing to rescale (and m is not a maximum yet): exp(0).
    return vec2<f32>(m_new, exp(select(0.0, m - m_new, t0 > 0u)));
}

// Visible keys of the tile at t0 for a row that sees my_keys keys.
fn visible(my_keys: u32, t0: u32) -> u32 {
    return min(TK, max(my_keys, t0) - t0);
}

@compute @workgroup_size(256, 1, 1)
fn attention_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let r = lid / TK;
    let c = lid % TK;
    let rows = p.tokens * p.group;
    let rho0 = wg.x * TR;
    // Row ρ of this kv head sits at row_offset(ρ) + `heads` in q and out (past their offsets).
    let heads = wg.z * p.q_bstride + wg.y * p.group * p.d;
    let k_base = p.k_off + wg.z * p.kv_bstride + wg.y * p.kv_hstride;
    let v_base = p.v_off + wg.z * p.kv_bstride + wg.y * p.kv_hstride;

    // tile_a: the q rows; tile_kt: keys, then scores; tile_b: values ([key][dim]).
    for (var e = lid; e < TR * p.d; e += 256u) {
        let rr = rho0 + e / p.d;
        var x = 0.0;
        if (rr < rows) { x = q[p.q_off + heads + row_offset(rr, p.group, p.q_tstride, p.d) + e % p.d]; }
        tile_a[(e / p.d) * TD + e % p.d] = x;
    }
    let pos = seq_pos(wg.z);
    let n_keys = tile_keys(pos, rho0, rows, p.group);
    let rho = rho0 + r;
    let my_keys = pos + rho / p.group + 1u;
    var m = 0.0;
    var l = 0.0;
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += TK) {
        // The last tile's readers are done (and, first time round, the q tile is written).
        workgroupBarrier();
        for (var e = lid; e < TK * p.d; e += 256u) {
            let j = e / p.d;
            let i = e % p.d;
            var kx = 0.0;
            var vx = 0.0;
            if (t0 + j < n_keys) {
                kx = k[k_base + (t0 + j) * p.d + i];
                vx = v[v_base + (t0 + j) * p.d + i];
            }
            tile_kt[kt_at(i, j)] = kx;
            tile_b[j * TD + i] = vx;
        }
        workgroupBarrier();
        var dot = 0.0;
        for (var i = 0u; i < p.d; i++) { dot = fma(tile_a[r * TD + i], tile_kt[kt_at(i, c)], dot); }
        workgroupBarrier();
        tile_kt[r * TK + c] = p.scale * dot;
        workgroupBarrier();

        let n_vis = visible(my_keys, t0);
        let mm = online_max(r, n_vis, t0, m);
        var sum = 0.0;
        var a0 = 0.0;
        var a1 = 0.0;
        var a2 = 0.0;
        var a3 = 0.0;
        for (var j = 0u; j < n_vis; j++) {
            let pj = exp(tile_kt[r * TK + j] - mm.x);
            sum += pj;
            a0 = fma(pj, tile_b[j * TD + c], a0);
            a1 = fma(pj, tile_b[j * TD + c + 16u], a1);
            a2 = fma(pj, tile_b[j * TD + c + 32u], a2);
            a3 = fma(pj, tile_b[j * TD + c + 48u], a3);
        }
        l = l * mm.y + sum;
        acc0 = acc0 * mm.y + a0;
        acc1 = acc1 * mm.y + a1;
        acc2 = acc2 * mm.y + a2;
        acc3 = acc3 * mm.y + a3;
        m = mm.x;
    }
    if (rho < rows) {
        let o = p.out_off + heads + row_offset(rho, p.group, p.q_tstride, p.d);
        if (c < p.d) { out[o + c] = acc0 / l; }
        if (c + 16u < p.d) { out[o + c + 16u] = acc1 / l; }
        if (c + 32u < p.d) { out[o + c + 32u] = acc2 / l; }
        if (c + 48u < p.d) { out[o + c + 48u] = acc3 / l; }
    }
}

// ---- Backward --------------------------------------------------------------------------------
// Both entries recompute the scores; nothing of the forward is saved. With P the softmax of
// s_j = scale q.k_j over the visible keys, o = sum_j P_j v_j and dO the upstream gradient:
//   dv_j += P_j dO,  dS_j = P_j (dO.v_j - Dr) with Dr = dO.o = sum_j P_j dO.v_j,
//   dq = scale sum_j dS_j k_j,  dk_j += scale dS_j q.
// attention_bwd_dq (one workgroup per (query token, head) of one kv group) also writes each
// row's log-sum-exp and Dr into `stats`; attention_bwd_dkv (one workgroup per key row of one kv
// head) loops over the queries that see the key, in a fixed order, and sums over the group's
// query heads: no atomics, so the result is deterministic.
// Workgroup y is the kv group and z the sequence (all of a batch in one dispatch where it
// fits): each binding's offset moves by z·(its sequence stride) + y·(its group stride)
// (`BwdMeta` and `offsets` in the prelude).

var<workgroup> row_b: array<f32, 256>;
var<workgroup> dss: array<f32, 256>;

// dq for the query at local token wg.x / group, head wg.x % group of the bound kv group; the
// bound k/v start at row 0 of that head's block and the query sits at position pos + token.
@compute @workgroup_size(256, 1, 1)
fn attention_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let o = offsets(wg, true);
    let tl = wg.x / pb.group;
    let hh = wg.x % pb.group;
    let row = tl * pb.q_tstride + hh * pb.d;
    let n_keys = pb.pos + tl + 1u;
    if (lid < pb.d) {
        qs[lid] = q[o.q + row + lid];
        row_b[lid] = dout[o.dout + row + lid];
    }
    workgroupBarrier();

    // Pass 1, online as in the forward: max m, l = sum e^(s - m), u = sum e^(s - m) dO.v.
    var m = 0.0;
    var l = 0.0;
    var u = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += WG) {
        let j = t0 + lid;
        var s = bitcast<f32>(0xff800000u);
        var dp = 0.0;
        if (j < n_keys) {
            var dot = 0.0;
            for (var i = 0u; i < pb.d; i++) {
                dot = fma(qs[i], k[o.k + j * pb.d + i], dot);
                dp = fma(row_b[i], v[o.v + j * pb.d + i], dp);
            }
            s = pb.scale * dot;
        }
        let tile_max = workgroup_max(lid, s);
        let m_new = select(tile_max, max(m, tile_max), t0 > 0u);
        let alpha = select(0.0, exp(min(m - m_new, 0.0)), t0 > 0u); // no overflow at t0 = 0, where m is not a max yet
        let e = select(0.0, exp(s - m_new), j < n_keys);
        l = l * alpha + workgroup_sum(lid, e);
        u = u * alpha + workgroup_sum(lid, e * dp);
        m = m_new;
    }
    let lse = m + log(l);
    let dr = u / l;
    let st = o.st + (tl * (pb.q_tstride / pb.d) + hh) * 2u;
    if (lid == 0u) {
        stats_w[st] = lse;
        stats_w[st + 1u] = dr;
    }

    // Pass 2: dS_j per key, folded into dq[i] by thread i.
    var acc = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += WG) {
        let j = t0 + lid;
        var ds = 0.0;
        if (j < n_keys) {
            var dot = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < pb.d; i++) {
                dot = fma(qs[i], k[o.k + j * pb.d + i], dot);
                dp = fma(row_b[i], v[o.v + j * pb.d + i], dp);
            }
            ds = exp(pb.scale * dot - lse) * (dp - dr);
        }
        dss[lid] = ds;
        workgroupBarrier();
        if (lid < pb.d) {
            let n = min(WG, n_keys - t0);
            for (var i = 0u; i < n; i++) { acc = fma(dss[i], k[o.k + (t0 + i) * pb.d + lid], acc); }
        }
        // The next tile overwrites `dss`.
        workgroupBarrier();
    }
    if (lid < pb.d) { grad_a[o.a + row + lid] = pb.scale * acc; }
}

// attention_bwd_dq for TR (token, head) rows of one kv group at a time: workgroup x is the tile
// (row ρ = local token · group + head, ρ < t_count · group), y and z as above; each key and
// value is read once for all TR rows, and the same stats are written. Key tiles are held
// transposed (the keys swizzled, see the forward's tiles): tile_a holds the q rows, tile_b the
// dO rows, tile_kt the keys and then the scores, tile_c the values and then dO·v or dS.

// Loads keys t0 .. t0 + TK (zeros past n_keys) into tile_kt and tile_c.
fn load_key_tile(lid: u32, o: Offsets, t0: u32, n_keys: u32) {
    for (var e = lid; e < TK * pb.d; e += 256u) {
        let j = e / pb.d;
        let i = e % pb.d;
        var kx = 0.0;
        var vx = 0.0;
        if (t0 + j < n_keys) {
            kx = k[o.k + (t0 + j) * pb.d + i];
            vx = v[o.v + (t0 + j) * pb.d + i];
        }
        tile_kt[kt_at(i, j)] = kx;
        tile_c[i * TK + j] = vx;
    }
}

@compute @workgroup_size(256, 1, 1)
fn attention_bwd_dq_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let r = lid / TK;
    let c = lid % TK;
    let o = offsets(wg, true);
    let rows = pb.t_count * pb.group;
    let rho0 = wg.x * TR;
    for (var e = lid; e < TR * pb.d; e += 256u) {
        let rr = rho0 + e / pb.d;
        var qx = 0.0;
        var dx = 0.0;
        if (rr < rows) {
            let at = row_offset(rr, pb.group, pb.q_tstride, pb.d) + e % pb.d;
            qx = q[o.q + at];
            dx = dout[o.dout + at];
        }
        tile_a[(e / pb.d) * TD + e % pb.d] = qx;
        tile_b[(e / pb.d) * TD + e % pb.d] = dx;
    }
    let n_keys = tile_keys(pb.pos, rho0, rows, pb.group);
    let rho = rho0 + r;
    let my_keys = pb.pos + rho / pb.group + 1u;

    // Pass 1, online as in the forward: max m, l = sum e^(s - m), u = sum e^(s - m) dO.v.
    var m = 0.0;
    var l = 0.0;
    var u = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += TK) {
        workgroupBarrier();
        load_key_tile(lid, o, t0, n_keys);
        workgroupBarrier();
        var dot = 0.0;
        var dp = 0.0;
        for (var i = 0u; i < pb.d; i++) {
            dot = fma(tile_a[r * TD + i], tile_kt[kt_at(i, c)], dot);
            dp = fma(tile_b[r * TD + i], tile_c[i * TK + c], dp);
        }
        workgroupBarrier();
        tile_kt[r * TK + c] = pb.scale * dot;
        tile_c[r * TK + c] = dp;
        workgroupBarrier();
        let n_vis = visible(my_keys, t0);
        let mm = online_max(r, n_vis, t0, m);
        var sl = 0.0;
        var su = 0.0;
        for (var j = 0u; j < n_vis; j++) {
            let e = exp(tile_kt[r * TK + j] - mm.x);
            sl += e;
            su = fma(e, tile_c[r * TK + j], su);
        }
        l = l * mm.y + sl;
        u = u * mm.y + su;
        m = mm.x;
    }
    let lse = m + log(l);
    let dr = u / l;
    if (c == 0u && rho < rows) {
        let st = o.st + row_offset(rho, pb.group, pb.q_tstride, pb.d) / pb.d * 2u;
        stats_w[st] = lse;
        stats_w[st + 1u] = dr;
    }

    // Pass 2: dS per (row, key), then dq_r = scale sum_j dS_rj k_j; thread (r, c) owns dims
    // c, c + 16, c + 32 and c + 48 of row r.
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    for (var t0 = 0u; t0 < n_keys; t0 += TK) {
        workgroupBarrier();
        load_key_tile(lid, o, t0, n_keys);
        workgroupBarrier();
        var ds = 0.0;
        if (t0 + c < my_keys) {
            var dot = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < pb.d; i++) {
                dot = fma(tile_a[r * TD + i], tile_kt[kt_at(i, c)], dot);
                dp = fma(tile_b[r * TD + i], tile_c[i * TK + c], dp);
            }
            ds = exp(pb.scale * dot - lse) * (dp - dr);
        }
        workgroupBarrier();
        tile_c[r * TK + c] = ds;
        workgroupBarrier();
        for (var j = 0u; j < TK; j++) {
            let dsj = tile_c[r * TK + j];
            acc0 = fma(dsj, tile_kt[kt_at(c, j)], acc0);
            acc1 = fma(dsj, tile_kt[kt_at(c + 16u, j)], acc1);
            acc2 = fma(dsj, tile_kt[kt_at(c + 32u, j)], acc2);
            acc3 = fma(dsj, tile_kt[kt_at(c + 48u, j)], acc3);
        }
    }
    if (rho < rows) {
        let a = o.a + row_offset(rho, pb.group, pb.q_tstride, pb.d);
        if (c < pb.d) { grad_a[a + c] = pb.scale * acc0; }
        if (c + 16u < pb.d) { grad_a[a + c + 16u] = pb.scale * acc1; }
        if (c + 32u < pb.d) { grad_a[a + c + 32u] = pb.scale * acc2; }
        if (c + 48u < pb.d) { grad_a[a + c + 48u] = pb.scale * acc3; }
    }
}

// attention_bwd_dkv for TK keys of one kv head at a time (workgroup x the key tile, y and z as
// above), for a dispatch that binds whole sequences (t_first = 0; keys < pos + t_count): the
// keys from j0 on, written from row 0 of dk/dv (j0 > 0 where the earlier keys are constants).
// The query rows that see any of the tile's keys go by in tiles of TR, each row's q and dO
// read once for all TK keys, in a fixed order (deterministic). Thread (key jj, row r) forms
// P and dS; then thread (key jj, c) adds them up into dims c, c + 16, c + 32, c + 48 of its
// key's dk and dv. The q and dO tiles are transposed and swizzled as tile_kt above. The
// tile's keys and values are read again with every row tile: P and dS take their place, as
// 16 KiB hold no fifth tile.
@compute @workgroup_size(256, 1, 1)
fn attention_bwd_dkv_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let jj = lid / TK;
    let rc = lid % TK; // the row r in the score phase, the dim c in the sums
    let o = offsets(wg, false);
    let rows = pb.t_count * pb.group;
    let n_keys = pb.pos + pb.t_count;
    let k0 = pb.j0 + wg.x * TK;
    let j = k0 + jj;
    // The first query that sees key k0 is at token max(k0, pos) - pos.
    let rho_lo = (max(k0, pb.pos) - pb.pos) * pb.group;
    var dk0 = 0.0;
    var dk1 = 0.0;
    var dk2 = 0.0;
    var dk3 = 0.0;
    var dv0 = 0.0;
    var dv1 = 0.0;
    var dv2 = 0.0;
    var dv3 = 0.0;
    for (var rho0 = rho_lo; rho0 < rows; rho0 += TR) {
        workgroupBarrier();
        // Row rr of the q/dO tiles and key rr of the k/v tiles in one loop (TR = TK).
        for (var e = lid; e < TR * pb.d; e += 256u) {
            let rr = e / pb.d;
            let i = e % pb.d;
            let rho = rho0 + rr;
            var qx = 0.0;
            var dx = 0.0;
            if (rho < rows) {
                let at = row_offset(rho, pb.group, pb.q_tstride, pb.d) + i;
                qx = q[o.q + at];
                dx = dout[o.dout + at];
            }
            tile_a[kt_at(i, rr)] = qx;
            tile_b[kt_at(i, rr)] = dx;
            let kj = k0 + rr;
            var kx = 0.0;
            var vx = 0.0;
            if (kj < n_keys) {
                kx = k[o.k + kj * pb.d + i];
                vx = v[o.v + kj * pb.d + i];
            }
            tile_kt[i * TK + rr] = kx;
            tile_c[i * TK + rr] = vx;
        }
        workgroupBarrier();
        let rho = rho0 + rc;
        var pj = 0.0;
        var ds = 0.0;
        if (rho < rows && j < n_keys && j <= pb.pos + rho / pb.group) {
            var dot = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < pb.d; i++) {
                dot = fma(tile_a[kt_at(i, rc)], tile_kt[i * TK + jj], dot);
                dp = fma(tile_b[kt_at(i, rc)], tile_c[i * TK + jj], dp);
            }
            let st = o.st + row_offset(rho, pb.group, pb.q_tstride, pb.d) / pb.d * 2u;
            pj = exp(pb.scale * dot - stats[st]);
            ds = pj * (dp - stats[st + 1u]);
        }
        workgroupBarrier();
        tile_kt[jj * TR + rc] = pj;
        tile_c[jj * TR + rc] = ds;
        workgroupBarrier();
        for (var r = 0u; r < TR; r++) {
            let pr = tile_kt[jj * TR + r];
            let dsr = tile_c[jj * TR + r];
            dv0 = fma(pr, tile_b[kt_at(rc, r)], dv0);
            dv1 = fma(pr, tile_b[kt_at(rc + 16u, r)], dv1);
            dv2 = fma(pr, tile_b[kt_at(rc + 32u, r)], dv2);
            dv3 = fma(pr, tile_b[kt_at(rc + 48u, r)], dv3);
            dk0 = fma(dsr, tile_a[kt_at(rc, r)], dk0);
            dk1 = fma(dsr, tile_a[kt_at(rc + 16u, r)], dk1);
            dk2 = fma(dsr, tile_a[kt_at(rc + 32u, r)], dk2);
            dk3 = fma(dsr, tile_a[kt_at(rc + 48u, r)], dk3);
        }
    }
    if (j < n_keys) {
        let a = o.a + (j - pb.j0) * pb.o_tstride;
        let b = o.b + (j - pb.j0) * pb.o_tstride;
        if (rc < pb.d) { grad_a[a + rc] = pb.scale * dk0; grad_b[b + rc] = dv0; }
        if (rc + 16u < pb.d) { grad_a[a + rc + 16u] = pb.scale * dk1; grad_b[b + rc + 16u] = dv1; }
        if (rc + 32u < pb.d) { grad_a[a + rc + 32u] = pb.scale * dk2; grad_b[b + rc + 32u] = dv2; }
        if (rc + 48u < pb.d) { grad_a[a + rc + 48u] = pb.scale * dk3; grad_b[b + rc + 48u] = dv3; }
    }
}

// dk and dv of key row j0 + wg.x of one kv head. The bound q, dout and stats start at query
// token t_first (head 0 of the group); queries t_lo .. t_count - 1 (tokens, counted from the
// sequence start) see the key, each with `group` heads, taken in (token, head) order. dk and
// dv rows are o_tstride apart (token-major output).
@compute @workgroup_size(256, 1, 1)
fn attention_bwd_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let o = offsets(wg, false);
    let j = pb.j0 + wg.x;
    if (lid < pb.d) {
        qs[lid] = k[o.k + wg.x * pb.d + lid];
        row_b[lid] = v[o.v + wg.x * pb.d + lid];
    }
    workgroupBarrier();
    let t_lo = max(j, pb.pos) - pb.pos;
    let n_rows = (pb.t_count - t_lo) * pb.group;
    let hq = pb.q_tstride / pb.d;
    var acc_k = 0.0;
    var acc_v = 0.0;
    for (var r0 = 0u; r0 < n_rows; r0 += WG) {
        let r = r0 + lid;
        var pj = 0.0;
        var ds = 0.0;
        if (r < n_rows) {
            let tl = t_lo - pb.t_first + r / pb.group;
            let hh = r % pb.group;
            let row = tl * pb.q_tstride + hh * pb.d;
            var dot = 0.0;
            var dp = 0.0;
            for (var i = 0u; i < pb.d; i++) {
                dot = fma(q[o.q + row + i], qs[i], dot);
                dp = fma(dout[o.dout + row + i], row_b[i], dp);
            }
            let st = o.st + (tl * hq + hh) * 2u;
            pj = exp(pb.scale * dot - stats[st]);
            ds = pj * (dp - stats[st + 1u]);
        }
        probs[lid] = pj;
        dss[lid] = ds;
        workgroupBarrier();
        if (lid < pb.d) {
            let n = min(WG, n_rows - r0);
            for (var i = 0u; i < n; i++) {
                let ri = r0 + i;
                let row = (t_lo - pb.t_first + ri / pb.group) * pb.q_tstride + (ri % pb.group) * pb.d;
                acc_v = fma(probs[i], dout[o.dout + row + lid], acc_v);
                acc_k = fma(dss[i], q[o.q + row + lid], acc_k);
            }
        }
        workgroupBarrier();
    }
    if (lid < pb.d) {
        grad_a[o.a + wg.x * pb.o_tstride + lid] = pb.scale * acc_k;
        grad_b[o.b + wg.x * pb.o_tstride + lid] = acc_v;
    }
}
