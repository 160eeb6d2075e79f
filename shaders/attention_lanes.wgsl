// The query-tiled attention kernels for software adapters with subgroups
// (`AttentionKernel::Lanes`), after the prelude shaders/attention_common.wgsl. Their own file
// because a module that uses subgroup built-ins builds only on a device with subgroups; the
// host runs them only where subgroups are exactly 8 wide (lavapipe on AVX2), so that a
// workgroup of 8 is one subgroup and lane i holds what lane i loaded.
//
// The tiled kernels' work split (shaders/attention.wgsl) without workgroup memory or
// barriers, which llvmpipe runs lane by lane. A workgroup pairs 16 items of one side (query
// rows, or keys in the dk/dv pass) with blocks of 16 of the other. Lane i loads items i and
// 8 + i of each side; the dot products of the block's 256 pairs come as in matmul_lanes: the
// first side's items broadcast from the lanes that loaded them (subgroupBroadcast, a register
// move on llvmpipe, where a load runs lane by lane), dotted with the lane's own two items of the
// second side. The products that follow (P·V, dS·K, Pᵀ·dO, dSᵀ·Q) give lane i dims 8i..8i+7 of
// the 16 outputs, four items' weights at a time broadcast from their lanes, as 4 × 4 products.
// Head dimension ≤ 64.
//
//   attention_lanes          the forward: 16 (token, head) rows of kv head y of sequence z
//                            (row ρ is local token ρ / group, query head y·group + ρ % group),
//                            keys in blocks of 16, each row's running max a subgroupMax; lane i
//                            keeps its keys' share of each row's sum and adds them up at the end.
//   attention_bwd_dq_lanes   attention_bwd_dq_tiled's two passes: the rows' log-sum-exp and
//                            Dr = dO·o (written to stats), then dq = scale Σ_j dS_j k_j.
//   attention_bwd_dkv_lanes  attention_bwd_dkv_tiled: 16 keys, the query rows that see them in
//                            blocks of 16, in a fixed order (deterministic).
//
// Masked scores are NEG, finite: a running max starts there and exp(NEG - m) is 0, so no
// infinity or NaN is ever formed; every row sees key 0, so its max is a score after block 0.
// Items past the last load the last one (in bounds by construction) and are masked or not
// stored.

const NEG: f32 = -3.0e38;

// The bindings an item's elements come from. The backward kernels read dO through `out`
// (binding 4 holds dO there, as it holds the output in the forward): naga counts every binding
// a function names as used by the kernels that call it, so a loader that named `dout` as well
// would give the forward two variables at binding 4.
const SRC_Q: u32 = 0u;
const SRC_K: u32 = 1u;
const SRC_V: u32 = 2u;
const SRC_DOUT: u32 = 3u;

fn at(src: u32, i: u32) -> f32 {
    switch src {
        case 0u: { return q[i]; }
        case 1u: { return k[i]; }
        case 2u: { return v[i]; }
        default: { return out[i]; }
    }
}

// Elements i..i+3 of a binding, of which the first `valid` exist; the rest read as zero.
fn load4(src: u32, i: u32, valid: u32) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    for (var t = 0u; t < 4u; t++) { if (t < valid) { x[t] = at(src, i + t); } }
    return x;
}

// The loads of `t` by lanes 0..3 (lo) or 4..7 (hi), lane 4h + c in column c.
fn lanes_lo(t: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(t, 0u), subgroupBroadcast(t, 1u), subgroupBroadcast(t, 2u), subgroupBroadcast(t, 3u));
}
fn lanes_hi(t: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(t, 4u), subgroupBroadcast(t, 5u), subgroupBroadcast(t, 6u), subgroupBroadcast(t, 7u));
}

// One lane's values for the 16 broadcast items, items 4g..4g+3 in r{g}.
struct Tile16 { r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32> }
fn splat16(x: f32) -> Tile16 { return Tile16(vec4<f32>(x), vec4<f32>(x), vec4<f32>(x), vec4<f32>(x)); }
fn add16(x: Tile16, y: Tile16) -> Tile16 { return Tile16(x.r0 + y.r0, x.r1 + y.r1, x.r2 + y.r2, x.r3 + y.r3); }
fn sub16(x: Tile16, y: Tile16) -> Tile16 { return Tile16(x.r0 - y.r0, x.r1 - y.r1, x.r2 - y.r2, x.r3 - y.r3); }
fn mul16(x: Tile16, y: Tile16) -> Tile16 { return Tile16(x.r0 * y.r0, x.r1 * y.r1, x.r2 * y.r2, x.r3 * y.r3); }
fn exp16(x: Tile16) -> Tile16 { return Tile16(exp(x.r0), exp(x.r1), exp(x.r2), exp(x.r3)); }
fn max16(x: Tile16, y: Tile16) -> Tile16 { return Tile16(max(x.r0, y.r0), max(x.r1, y.r1), max(x.r2, y.r2), max(x.r3, y.r3)); }
fn subgroup_max16(x: Tile16) -> Tile16 {
    return Tile16(subgroupMax(x.r0), subgroupMax(x.r1), subgroupMax(x.r2), subgroupMax(x.r3));
}
fn subgroup_add16(x: Tile16) -> Tile16 {
    return Tile16(subgroupAdd(x.r0), subgroupAdd(x.r1), subgroupAdd(x.r2), subgroupAdd(x.r3));
}
// Item r (0..15).
fn pick(x: Tile16, r: u32) -> f32 {
    var g = x.r0;
    if (r >= 12u) { g = x.r3; } else if (r >= 8u) { g = x.r2; } else if (r >= 4u) { g = x.r1; }
    return g[r & 3u];
}

// The dot products of the 16 broadcast items (x, whose items i and 8 + i this lane's loads
// start at xa and xb) with this lane's own two items of y (at ya and yb): a and b.
struct Pair { a: Tile16, b: Tile16 }
fn products(xsrc: u32, xa: u32, xb: u32, ysrc: u32, ya: u32, yb: u32, d: u32) -> Pair {
    var sa = Tile16();
    var sb = Tile16();
    for (var i = 0u; i < d; i += 4u) {
        let valid = min(4u, d - i);
        // Column c of the four: items c, 4 + c, 8 + c and 12 + c, four steps of the head dim.
        let x0 = load4(xsrc, xa + i, valid);
        let x1 = load4(xsrc, xb + i, valid);
        let x_lo = lanes_lo(x0);
        let x_hi = lanes_hi(x0);
        let x8_lo = lanes_lo(x1);
        let x8_hi = lanes_hi(x1);
        let wa = load4(ysrc, ya + i, valid);
        let wb = load4(ysrc, yb + i, valid);
        sa.r0 += wa * x_lo; sa.r1 += wa * x_hi; sa.r2 += wa * x8_lo; sa.r3 += wa * x8_hi;
        sb.r0 += wb * x_lo; sb.r1 += wb * x_hi; sb.r2 += wb * x8_lo; sb.r3 += wb * x8_hi;
    }
    return Pair(sa, sb);
}

// One key block's step of the online softmax for scores sa (keys kb + lane) and sb (kb + 8 +
// lane): the rows' new running max, the factor exp(m_old - m_new) that rescales what they have
// summed, and e^(s - m_new) of both keys.
struct Step { m: Tile16, alpha: Tile16, ea: Tile16, eb: Tile16 }
fn online_step(m: Tile16, sa: Tile16, sb: Tile16) -> Step {
    let m_new = max16(m, subgroup_max16(max16(sa, sb)));
    return Step(m_new, exp16(sub16(m, m_new)), exp16(sub16(sa, m_new)), exp16(sub16(sb, m_new)));
}

// Rows rho0..rho0+15 see keys 0 .. pos + token (rows past the last see more; they are not
// stored).
struct Seen16 { r0: vec4<u32>, r1: vec4<u32>, r2: vec4<u32>, r3: vec4<u32> }
fn seen_rows(rho0: u32, pos: u32, group: u32) -> Seen16 {
    let r = vec4<u32>(rho0) + vec4<u32>(0u, 1u, 2u, 3u);
    let base = vec4<u32>(pos + 1u);
    let g = vec4<u32>(group);
    return Seen16(base + r / g, base + (r + 4u) / g, base + (r + 8u) / g, base + (r + 12u) / g);
}

// scale · s for the rows that see key j, else NEG.
fn masked_rows(s: Tile16, j: u32, sees: Seen16, scale: f32) -> Tile16 {
    let jj = vec4<u32>(j);
    let neg = vec4<f32>(NEG);
    return Tile16(
        select(neg, scale * s.r0, jj < sees.r0), select(neg, scale * s.r1, jj < sees.r1),
        select(neg, scale * s.r2, jj < sees.r2), select(neg, scale * s.r3, jj < sees.r3));
}

// exp(scale · s - lse) for keys k0..k0+15 a row that sees `sees` keys sees, else 0.
fn probs_keys(s: Tile16, k0: u32, sees: u32, scale: f32, lse: f32) -> Tile16 {
    let j = vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u);
    let e = exp16(sub16(Tile16(scale * s.r0, scale * s.r1, scale * s.r2, scale * s.r3), splat16(lse)));
    let n = vec4<u32>(sees);
    let z = vec4<f32>(0.0);
    return Tile16(select(z, e.r0, j < n), select(z, e.r1, j + 4u < n), select(z, e.r2, j + 8u < n), select(z, e.r3, j + 12u < n));
}

// This lane's output dims 8i..8i+3 (a) and 8i+4..8i+7 (b) for items 4g..4g+3 (item 4g + c in
// column c of a{g} and b{g}).
struct Out {
    a0: mat4x4<f32>, a1: mat4x4<f32>, a2: mat4x4<f32>, a3: mat4x4<f32>,
    b0: mat4x4<f32>, b1: mat4x4<f32>, b2: mat4x4<f32>, b3: mat4x4<f32>,
}

fn scale_cols(m: mat4x4<f32>, f: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(m[0] * f[0], m[1] * f[1], m[2] * f[2], m[3] * f[3]);
}

fn rescale(o: ptr<function, Out>, f: Tile16) {
    (*o).a0 = scale_cols((*o).a0, f.r0); (*o).b0 = scale_cols((*o).b0, f.r0);
    (*o).a1 = scale_cols((*o).a1, f.r1); (*o).b1 = scale_cols((*o).b1, f.r1);
    (*o).a2 = scale_cols((*o).a2, f.r2); (*o).b2 = scale_cols((*o).b2, f.r2);
    (*o).a3 = scale_cols((*o).a3, f.r3); (*o).b3 = scale_cols((*o).b3, f.r3);
}

// Four items' weights for the 16 outputs, broadcast from the lanes that own the items (lanes
// 0..3 or 4..7 of `w`): column c of g{n} is item c's weights for outputs 4n..4n+3.
struct Weights4 { g0: mat4x4<f32>, g1: mat4x4<f32>, g2: mat4x4<f32>, g3: mat4x4<f32> }
fn weights_lo(w: Tile16) -> Weights4 { return Weights4(lanes_lo(w.r0), lanes_lo(w.r1), lanes_lo(w.r2), lanes_lo(w.r3)); }
fn weights_hi(w: Tile16) -> Weights4 { return Weights4(lanes_hi(w.r0), lanes_hi(w.r1), lanes_hi(w.r2), lanes_hi(w.r3)); }

// This lane's dims of the four items that start at `starts`, item s in column s: a for dims
// dl..dl+3, b for dl+4..dl+7.
struct Dims4 { a: mat4x4<f32>, b: mat4x4<f32> }
fn dims_of(src: u32, starts: vec4<u32>, dl: u32, d: u32) -> Dims4 {
    let na = min(4u, max(d, dl) - dl);
    let nb = min(4u, max(d, dl + 4u) - dl - 4u);
    var w: Dims4;
    for (var s = 0u; s < 4u; s++) {
        w.a[s] = load4(src, starts[s] + dl, na);
        w.b[s] = load4(src, starts[s] + dl + 4u, nb);
    }
    return w;
}

// Where keys j0..j0+3 start (clamped to the last key, whose weight is then 0 where it counts).
fn key_starts(base: u32, j0: u32, n_keys: u32, d: u32) -> vec4<u32> {
    return vec4<u32>(base) + min(vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n_keys - 1u)) * d;
}

// Where rows rho..rho+3 start (clamped to the last row), from their kv group's first.
fn row_starts(rho: u32, rows: u32, group: u32, q_tstride: u32, d: u32) -> vec4<u32> {
    let r = min(vec4<u32>(rho) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(rows - 1u));
    return (r / group) * q_tstride + (r % group) * d;
}

// o += Σ over four items of (their weights) × (their dims): dims × items times items × outputs.
fn add_items(o: ptr<function, Out>, w: Weights4, x: Dims4) {
    (*o).a0 += x.a * transpose(w.g0); (*o).b0 += x.b * transpose(w.g0);
    (*o).a1 += x.a * transpose(w.g1); (*o).b1 += x.b * transpose(w.g1);
    (*o).a2 += x.a * transpose(w.g2); (*o).b2 += x.b * transpose(w.g2);
    (*o).a3 += x.a * transpose(w.g3); (*o).b3 += x.b * transpose(w.g3);
}

// The 16 keys' block's share of o, keys kb.. with weights wa (keys kb + lane) and wb (kb + 8 +
// lane), their dims from src at `base`.
fn add_keys(o: ptr<function, Out>, wa: Tile16, wb: Tile16, src: u32, base: u32, kb: u32, n_keys: u32, dl: u32, d: u32) {
    add_items(o, weights_lo(wa), dims_of(src, key_starts(base, kb, n_keys, d), dl, d));
    add_items(o, weights_hi(wa), dims_of(src, key_starts(base, kb + 4u, n_keys, d), dl, d));
    add_items(o, weights_lo(wb), dims_of(src, key_starts(base, kb + 8u, n_keys, d), dl, d));
    add_items(o, weights_hi(wb), dims_of(src, key_starts(base, kb + 12u, n_keys, d), dl, d));
}

// Dim e (0..7) of output c of a group: a holds dims 0..3, b 4..7.
fn dim_at(a: mat4x4<f32>, b: mat4x4<f32>, c: u32, e: u32) -> f32 {
    return select(a[c][e & 3u], b[c][e & 3u], e >= 4u);
}

// Rows rho..rho+3 (of `rows`) of the forward's output: row rho + c gets f[c] times this lane's
// dims. (The dq pass has its own: a function that named both outputs would bind both.)
fn store_out(base: u32, rho: u32, rows: u32, dl: u32, a: mat4x4<f32>, b: mat4x4<f32>, f: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if (rho + c < rows) {
            let o = base + row_offset(rho + c, p.group, p.q_tstride, p.d) + dl;
            for (var e = 0u; e < 8u; e++) {
                if (dl + e < p.d) { out[o + e] = dim_at(a, b, c, e) * f[c]; }
            }
        }
    }
}

fn store_dq(base: u32, rho: u32, rows: u32, dl: u32, a: mat4x4<f32>, b: mat4x4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if (rho + c < rows) {
            let o = base + row_offset(rho + c, pb.group, pb.q_tstride, pb.d) + dl;
            for (var e = 0u; e < 8u; e++) {
                if (dl + e < pb.d) { grad_a[o + e] = pb.scale * dim_at(a, b, c, e); }
            }
        }
    }
}

@compute @workgroup_size(8, 1, 1)
fn attention_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let rows = p.tokens * p.group;
    let rho0 = wg.x * 16u;
    // Row ρ of this kv head sits at row_offset(ρ) + `heads` in q and out (past their offsets).
    let heads = wg.z * p.q_bstride + wg.y * p.group * p.d;
    let k_base = p.k_off + wg.z * p.kv_bstride + wg.y * p.kv_hstride;
    let v_base = p.v_off + wg.z * p.kv_bstride + wg.y * p.kv_hstride;
    // Up to the last row's position.
    let pos = seq_pos(wg.z);
    let n_keys = pos + (min(rho0 + 16u, rows) - 1u) / p.group + 1u;
    let qa = p.q_off + heads + row_offset(min(rho0 + lane, rows - 1u), p.group, p.q_tstride, p.d);
    let qb = p.q_off + heads + row_offset(min(rho0 + 8u + lane, rows - 1u), p.group, p.q_tstride, p.d);
    let sees = seen_rows(rho0, pos, p.group);
    let dl = 8u * lane;
    var m = splat16(NEG);
    var l = Tile16();
    var o: Out;
    for (var kb = 0u; kb < n_keys; kb += 16u) {
        let ja = kb + lane;
        let s = products(SRC_Q, qa, qb, SRC_K, k_base + min(ja, n_keys - 1u) * p.d, k_base + min(ja + 8u, n_keys - 1u) * p.d, p.d);
        let st = online_step(m, masked_rows(s.a, ja, sees, p.scale), masked_rows(s.b, ja + 8u, sees, p.scale));
        l = add16(mul16(l, st.alpha), add16(st.ea, st.eb));
        m = st.m;
        rescale(&o, st.alpha);
        add_keys(&o, st.ea, st.eb, SRC_V, v_base, kb, n_keys, dl, p.d);
    }
    // Each lane summed its own keys' share of every row.
    let sums = subgroup_add16(l);
    if (dl < p.d) {
        let base = p.out_off + heads;
        store_out(base, rho0, rows, dl, o.a0, o.b0, 1.0 / sums.r0);
        store_out(base, rho0 + 4u, rows, dl, o.a1, o.b1, 1.0 / sums.r1);
        store_out(base, rho0 + 8u, rows, dl, o.a2, o.b2, 1.0 / sums.r2);
        store_out(base, rho0 + 12u, rows, dl, o.a3, o.b3, 1.0 / sums.r3);
    }
}

// The dq pass's products of a key block (this lane's keys ja and ja + 8) with the rows that
// start at ra and rb: the scores' q·k and dO·v.
struct DqProducts { s: Pair, dp: Pair }
fn dq_products(o: Offsets, ra: u32, rb: u32, ja: u32, n_keys: u32) -> DqProducts {
    let k_a = min(ja, n_keys - 1u) * pb.d;
    let k_b = min(ja + 8u, n_keys - 1u) * pb.d;
    return DqProducts(
        products(SRC_Q, o.q + ra, o.q + rb, SRC_K, o.k + k_a, o.k + k_b, pb.d),
        products(SRC_DOUT, o.dout + ra, o.dout + rb, SRC_V, o.v + k_a, o.v + k_b, pb.d));
}

@compute @workgroup_size(8, 1, 1)
fn attention_bwd_dq_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let o = offsets(wg, true);
    let rows = pb.t_count * pb.group;
    let rho0 = wg.x * 16u;
    let n_keys = pb.pos + (min(rho0 + 16u, rows) - 1u) / pb.group + 1u;
    let ra = row_offset(min(rho0 + lane, rows - 1u), pb.group, pb.q_tstride, pb.d);
    let rb = row_offset(min(rho0 + 8u + lane, rows - 1u), pb.group, pb.q_tstride, pb.d);
    let sees = seen_rows(rho0, pb.pos, pb.group);
    let dl = 8u * lane;

    // Pass 1, online as in the forward: max m, l = Σ e^(s - m), u = Σ e^(s - m) dO·v.
    var m = splat16(NEG);
    var l = Tile16();
    var u = Tile16();
    for (var kb = 0u; kb < n_keys; kb += 16u) {
        let ja = kb + lane;
        let x = dq_products(o, ra, rb, ja, n_keys);
        let s = x.s;
        let dp = x.dp;
        let st = online_step(m, masked_rows(s.a, ja, sees, pb.scale), masked_rows(s.b, ja + 8u, sees, pb.scale));
        l = add16(mul16(l, st.alpha), add16(st.ea, st.eb));
        u = add16(mul16(u, st.alpha), add16(mul16(st.ea, dp.a), mul16(st.eb, dp.b)));
        m = st.m;
    }
    let sl = subgroup_add16(l);
    let su = subgroup_add16(u);
    let lse = Tile16(m.r0 + log(sl.r0), m.r1 + log(sl.r1), m.r2 + log(sl.r2), m.r3 + log(sl.r3));
    let dr = Tile16(su.r0 / sl.r0, su.r1 / sl.r1, su.r2 / sl.r2, su.r3 / sl.r3);
    // Lane i writes the statistics of rows i and 8 + i.
    for (var h = 0u; h < 2u; h++) {
        let r = lane + 8u * h;
        if (rho0 + r < rows) {
            let st = o.st + row_offset(rho0 + r, pb.group, pb.q_tstride, pb.d) / pb.d * 2u;
            stats_w[st] = pick(lse, r);
            stats_w[st + 1u] = pick(dr, r);
        }
    }

    // Pass 2: dS per (row, key), then dq_r = scale Σ_j dS_rj k_j.
    var acc: Out;
    for (var kb = 0u; kb < n_keys; kb += 16u) {
        let ja = kb + lane;
        let x = dq_products(o, ra, rb, ja, n_keys);
        let s = x.s;
        let dp = x.dp;
        // exp(NEG - lse) is 0: masked keys have dS 0.
        let dsa = mul16(exp16(sub16(masked_rows(s.a, ja, sees, pb.scale), lse)), sub16(dp.a, dr));
        let dsb = mul16(exp16(sub16(masked_rows(s.b, ja + 8u, sees, pb.scale), lse)), sub16(dp.b, dr));
        add_keys(&acc, dsa, dsb, SRC_K, o.k, kb, n_keys, dl, pb.d);
    }
    if (dl < pb.d) {
        store_dq(o.a, rho0, rows, dl, acc.a0, acc.b0);
        store_dq(o.a, rho0 + 4u, rows, dl, acc.a1, acc.b1);
        store_dq(o.a, rho0 + 8u, rows, dl, acc.a2, acc.b2);
        store_dq(o.a, rho0 + 12u, rows, dl, acc.a3, acc.b3);
    }
}

@compute @workgroup_size(8, 1, 1)
fn attention_bwd_dkv_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let o = offsets(wg, false);
    let rows = pb.t_count * pb.group;
    let n_keys = pb.pos + pb.t_count;
    let k0 = pb.j0 + wg.x * 16u;
    let k_a = min(k0 + lane, n_keys - 1u) * pb.d;
    let k_b = min(k0 + 8u + lane, n_keys - 1u) * pb.d;
    // The first query that sees key k0 is at token max(k0, pos) - pos.
    let rho_lo = (max(k0, pb.pos) - pb.pos) * pb.group;
    let dl = 8u * lane;
    var dk: Out;
    var dv: Out;
    for (var rho0 = rho_lo; rho0 < rows; rho0 += 16u) {
        // This lane's rows: rho0 + lane (a) and rho0 + 8 + lane (b).
        let ra = row_offset(min(rho0 + lane, rows - 1u), pb.group, pb.q_tstride, pb.d);
        let rb = row_offset(min(rho0 + 8u + lane, rows - 1u), pb.group, pb.q_tstride, pb.d);
        let s = products(SRC_K, o.k + k_a, o.k + k_b, SRC_Q, o.q + ra, o.q + rb, pb.d);
        let dp = products(SRC_V, o.v + k_a, o.v + k_b, SRC_DOUT, o.dout + ra, o.dout + rb, pb.d);
        let st_a = o.st + ra / pb.d * 2u;
        let st_b = o.st + rb / pb.d * 2u;
        // Rows past the last see no key.
        let sees_a = select(0u, pb.pos + (rho0 + lane) / pb.group + 1u, rho0 + lane < rows);
        let sees_b = select(0u, pb.pos + (rho0 + 8u + lane) / pb.group + 1u, rho0 + 8u + lane < rows);
        let p_a = probs_keys(s.a, k0, sees_a, pb.scale, stats[st_a]);
        let p_b = probs_keys(s.b, k0, sees_b, pb.scale, stats[st_b]);
        let dsa = mul16(p_a, sub16(dp.a, splat16(stats[st_a + 1u])));
        let dsb = mul16(p_b, sub16(dp.b, splat16(stats[st_b + 1u])));
        // Over the block's rows: dv += Pᵀ dO, dk += dSᵀ q.
        let r0 = row_starts(rho0, rows, pb.group, pb.q_tstride, pb.d);
        let r4 = row_starts(rho0 + 4u, rows, pb.group, pb.q_tstride, pb.d);
        let r8 = row_starts(rho0 + 8u, rows, pb.group, pb.q_tstride, pb.d);
        let r12 = row_starts(rho0 + 12u, rows, pb.group, pb.q_tstride, pb.d);
        add_items(&dv, weights_lo(p_a), dims_of(SRC_DOUT, vec4<u32>(o.dout) + r0, dl, pb.d));
        add_items(&dv, weights_hi(p_a), dims_of(SRC_DOUT, vec4<u32>(o.dout) + r4, dl, pb.d));
        add_items(&dv, weights_lo(p_b), dims_of(SRC_DOUT, vec4<u32>(o.dout) + r8, dl, pb.d));
        add_items(&dv, weights_hi(p_b), dims_of(SRC_DOUT, vec4<u32>(o.dout) + r12, dl, pb.d));
        add_items(&dk, weights_lo(dsa), dims_of(SRC_Q, vec4<u32>(o.q) + r0, dl, pb.d));
        add_items(&dk, weights_hi(dsa), dims_of(SRC_Q, vec4<u32>(o.q) + r4, dl, pb.d));
        add_items(&dk, weights_lo(dsb), dims_of(SRC_Q, vec4<u32>(o.q) + r8, dl, pb.d));
        add_items(&dk, weights_hi(dsb), dims_of(SRC_Q, vec4<u32>(o.q) + r12, dl, pb.d));
    }
    if (dl < pb.d) {
        store_keys(dk, dv, o.a, o.b, k0, n_keys, dl);
    }
}

// dk (scaled) and dv of keys k0..k0+15 (those before n_keys), this lane's dims; key j's rows
// at (j - j0) · o_tstride.
fn store_keys(dk: Out, dv: Out, a: u32, b: u32, k0: u32, n_keys: u32, dl: u32) {
    store_key_group(dk.a0, dk.b0, dv.a0, dv.b0, a, b, k0, n_keys, dl);
    store_key_group(dk.a1, dk.b1, dv.a1, dv.b1, a, b, k0 + 4u, n_keys, dl);
    store_key_group(dk.a2, dk.b2, dv.a2, dv.b2, a, b, k0 + 8u, n_keys, dl);
    store_key_group(dk.a3, dk.b3, dv.a3, dv.b3, a, b, k0 + 12u, n_keys, dl);
}

fn store_key_group(ka: mat4x4<f32>, kb: mat4x4<f32>, va: mat4x4<f32>, vb: mat4x4<f32>, a: u32, b: u32, j: u32, n_keys: u32, dl: u32) {
    for (var c = 0u; c < 4u; c++) {
        if (j + c < n_keys) {
            let oa = a + (j + c - pb.j0) * pb.o_tstride + dl;
            let ob = b + (j + c - pb.j0) * pb.o_tstride + dl;
            for (var e = 0u; e < 8u; e++) {
                if (dl + e < pb.d) {
                    grad_a[oa + e] = pb.scale * dim_at(ka, kb, c, e);
                    grad_b[ob + e] = dim_at(va, vb, c, e);
                }
            }
        }
    }
}
