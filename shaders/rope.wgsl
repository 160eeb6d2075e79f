// Rotary position embedding of x: [B, T, H, D] (rows of D, one row per (b, t, h)), into out.
// One thread per rotated pair. The host covers rows row0 .. row0 + pairs / half; token t of a
// row sits at position pos0 + t. Pairs are (2i, 2i+1) when `adjacent` (GGUF) and (i, i + D/2)
// otherwise (Hugging Face rotate_half); both use frequency i. With `inverse` the rotation is by
// -angle: the transpose, which is the backward of the rotation (rope_bwd).
// rope_pair rotates two tensors of the same B, T and D in one dispatch (a layer's queries and
// keys): threads below `pairs` work on x → out (`heads` heads), the next `pairs2` on x2 → out2
// (`heads2` heads); the host uses it only where both are bound whole from element 0.
// rope_kv is a layer's whole step before attention in one dispatch: the queries x → out as
// rope does, the keys x2 rotated straight into their cache out2: [B, heads2, cap, D] at rows
// pos0.. (threads pairs .. pairs + pairs2), and the values v copied into theirs, vc (the next
// pairs2 threads, two values each). Every binding carries its offset, so views need no care.
// rope_kv also takes sequences decoded together at their own positions (one token each, up to
// 16 per dispatch, `each`), and, where tstride is not 0, its three inputs as parts of one stacked
// q/k/v product: a token's heads of each part consecutive, tokens tstride apart.
// rope_bwd_stacked is the backward of rope_kv's rotation on a stacked q/k/v gradient `out`
// (rows tstride apart, from out_off): the queries' gradient x (dense, from in_off) rotated back
// into each row's query columns, and the keys' columns, which attention's backward wrote there
// (from element in2_off of the binding), rotated back in place; the values' columns are left.
// norm_qkv_rope_kv is rms_norm → the stacked q/k/v product → rope_kv for a few rows (a decoded
// token on a hardware adapter) in one dispatch: see its entry below.
//
// Precision: inv_freq comes from the host, computed in f64 and rounded once to f32. The angle
// pos * inv_freq is one f32 product (relative error 2^-24, so about 6e-5 rad at position 1000),
// and sin/cos are the device's f32 ones.

struct Meta {
    pairs: u32, half: u32, heads: u32, seq: u32,
    row0: u32, pos0: u32, in_off: u32, out_off: u32,
    adjacent: u32, inverse: u32, pairs2: u32, heads2: u32,
    cap: u32, in2_off: u32, out2_off: u32, v_off: u32,
    vc_off: u32, cols: u32, eps: f32, tstride: u32,
    // Where pos0 is EACH (rope_kv only, one token per sequence): sequence b sits at position
    // each[b / 4][b % 4], b < 16.
    each: array<vec4<u32>, 4>,
    // Uniform arrays need a 16-byte stride: frequency i is inv_freq[i / 4][i % 4].
    inv_freq: array<vec4<f32>, 64>,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> x2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;

const EACH: u32 = 0xffffffffu;

// The position of token t of sequence b.
fn position(b: u32, t: u32) -> u32 {
    // Not a select, which would read each[] past its 16 for the other dispatches' sequences.
    if (p.pos0 == EACH) { return p.each[b / 4u][b % 4u]; }
    return p.pos0 + t;
}

// Rotated pair k of a tensor with `heads` heads: its two indices and the angle's cos and sin.
struct Rotation { ia: u32, ib: u32, c: f32, s: f32 }

fn rotation(k: u32, heads: u32) -> Rotation {
    let row = k / p.half;
    let i = k % p.half;
    let bt = (p.row0 + row) / heads;
    let angle = f32(position(bt / p.seq, bt % p.seq)) * p.inv_freq[i / 4u][i % 4u];
    var r: Rotation;
    r.c = cos(angle);
    r.s = select(sin(angle), -sin(angle), p.inverse != 0u);
    r.ia = row * 2u * p.half + i;
    r.ib = r.ia + p.half;
    if (p.adjacent != 0u) {
        r.ia = row * 2u * p.half + 2u * i;
        r.ib = r.ia + 1u;
    }
    return r;
}

@compute @workgroup_size(256, 1, 1)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if (k >= p.pairs) { return; }
    let r = rotation(k, p.heads);
    let a = x[p.in_off + r.ia];
    let b = x[p.in_off + r.ib];
    out[p.out_off + r.ia] = a * r.c - b * r.s;
    out[p.out_off + r.ib] = a * r.s + b * r.c;
}

@compute @workgroup_size(256, 1, 1)
fn rope_pair(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if (k < p.pairs) {
        let r = rotation(k, p.heads);
        let a = x[r.ia];
        let b = x[r.ib];
        out[r.ia] = a * r.c - b * r.s;
        out[r.ib] = a * r.s + b * r.c;
    } else if (k < p.pairs + p.pairs2) {
        let r = rotation(k - p.pairs, p.heads2);
        let a = x2[r.ia];
        let b = x2[r.ib];
        out2[r.ia] = a * r.c - b * r.s;
        out2[r.ib] = a * r.s + b * r.c;
    }
}

// Element `col` of row `row` of a [B, T, heads2, D] tensor, in its [B, heads2, cap, D] cache at
// position pos0 + t.
fn cache_index(row: u32, col: u32) -> u32 {
    let h = row % p.heads2;
    let bt = row / p.heads2;
    let b = bt / p.seq;
    let t = bt % p.seq;
    return ((b * p.heads2 + h) * p.cap + position(b, t)) * (2u * p.half) + col;
}

// Where element `col` of row `row` (a token's head) of a dense [B, T, heads, D] input sits in
// rope_kv's binding (from its offset): rows D apart, or a stacked product's tokens tstride apart.
fn src(row: u32, col: u32, heads: u32) -> u32 {
    let d = 2u * p.half;
    if (p.tstride == 0u) { return row * d + col; }
    return (row / heads) * p.tstride + (row % heads) * d + col;
}

@compute @workgroup_size(256, 1, 1)
fn rope_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let d = 2u * p.half;
    if (k < p.pairs) {
        let r = rotation(k, p.heads);
        let row = k / p.half;
        let a = x[p.in_off + src(row, r.ia - row * d, p.heads)];
        let b = x[p.in_off + src(row, r.ib - row * d, p.heads)];
        out[p.out_off + r.ia] = a * r.c - b * r.s;
        out[p.out_off + r.ib] = a * r.s + b * r.c;
    } else if (k < p.pairs + p.pairs2) {
        let j = k - p.pairs;
        let r = rotation(j, p.heads2);
        let row = j / p.half;
        let a = x2[p.in2_off + src(row, r.ia - row * d, p.heads2)];
        let b = x2[p.in2_off + src(row, r.ib - row * d, p.heads2)];
        out2[p.out2_off + cache_index(row, r.ia - row * d)] = a * r.c - b * r.s;
        out2[p.out2_off + cache_index(row, r.ib - row * d)] = a * r.s + b * r.c;
    } else if (k < p.pairs + 2u * p.pairs2) {
        // Two consecutive values of a row (D is even): no rotation.
        let j = k - p.pairs - p.pairs2;
        let row = j / p.half;
        let col = 2u * (j % p.half);
        let at = p.v_off + src(row, col, p.heads2);
        let dst = p.vc_off + cache_index(row, col);
        vc[dst] = v[at];
        vc[dst + 1u] = v[at + 1u];
    }
}

@compute @workgroup_size(256, 1, 1)
fn rope_bwd_stacked(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    let d = 2u * p.half;
    if (k < p.pairs) {
        let r = rotation(k, p.heads);
        let row = k / p.half;
        let a = x[p.in_off + r.ia];
        let b = x[p.in_off + r.ib];
        out[p.out_off + src(row, r.ia - row * d, p.heads)] = a * r.c - b * r.s;
        out[p.out_off + src(row, r.ib - row * d, p.heads)] = a * r.s + b * r.c;
    } else if (k < p.pairs + p.pairs2) {
        let j = k - p.pairs;
        let r = rotation(j, p.heads2);
        let row = j / p.half;
        let ia = p.in2_off + src(row, r.ia - row * d, p.heads2);
        let ib = p.in2_off + src(row, r.ib - row * d, p.heads2);
        let a = out[ia];
        let b = out[ib];
        out[ia] = a * r.c - b * r.s;
        out[ib] = a * r.s + b * r.c;
    }
}

// ---- The norm, the stacked q/k/v product and rope_kv in one dispatch --------------------------
// Workgroup (j, r): rotated pair j of row r's stacked output [q | k | v] (heads + 2·heads2 heads
// of D; pairs within a head as `rotation` pairs them). Bindings: the rows x (binding 1, from
// in_off, `cols` values each), the norm's weight (binding 5 `v`, from v_off), the stacked
// matrix [(heads + 2·heads2)·D, cols] (binding 3 `x2`, from in2_off), the rotated queries
// [rows, heads, D] (binding 2 `out`, from out_off), the caches (bindings 4 `out2` and 6 `vc`,
// [B, heads2, cap, D], from out2_off and vc_off); row r is token r % seq of sequence r / seq.
// The pair's two dot products take the row's sum of squares along, as norm.wgsl's
// rms_norm_matvec does (the same arithmetic and reduction order as that kernel followed by
// rope_kv). The host runs it only where everything fits one binding.

override RWG: u32 = 256u;
var<workgroup> sums: array<vec3<f32>, 256>;

// Sum over the workgroup (RWG ≤ 256 threads, a power of two); thread 0 gets the result.
fn workgroup_sum3(lid: u32, v: vec3<f32>) -> vec3<f32> {
    sums[lid] = v;
    workgroupBarrier();
    for (var s = RWG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { sums[lid] += sums[lid + s]; }
        workgroupBarrier();
    }
    return sums[0];
}

@compute @workgroup_size(RWG, 1, 1)
fn norm_qkv_rope_kv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let r = wg.y;
    let d = 2u * p.half;
    let head = wg.x / p.half;
    // The pair as `rotation` sees it: (token, head) row `row` of the stacked output, whose
    // heads + 2·heads2 heads make token r.
    let row = r * (p.heads + 2u * p.heads2) + head;
    let rot = rotation(row * p.half + wg.x % p.half, p.heads + 2u * p.heads2);
    // The pair's columns within its head.
    let ca = rot.ia - row * d;
    let cb = rot.ib - row * d;
    let xb = p.in_off + r * p.cols;
    let ma = p.in2_off + (head * d + ca) * p.cols;
    let mb = p.in2_off + (head * d + cb) * p.cols;
    var sq = 0.0;
    var da = 0.0;
    var db = 0.0;
    for (var c = lid; c < p.cols; c += RWG) {
        let xv = x[xb + c];
        sq += xv * xv;
        let xw = xv * v[p.v_off + c];
        da = fma(xw, x2[ma + c], da);
        db = fma(xw, x2[mb + c], db);
    }
    let total = workgroup_sum3(lid, vec3<f32>(sq, da, db));
    if (lid != 0u) { return; }
    let inv = 1.0 / sqrt(total.x / f32(p.cols) + p.eps);
    let a = total.y * inv;
    let b = total.z * inv;
    if (head < p.heads) {
        let o = p.out_off + (r * p.heads + head) * d;
        out[o + ca] = a * rot.c - b * rot.s;
        out[o + cb] = a * rot.s + b * rot.c;
    } else if (head < p.heads + p.heads2) {
        let kv_row = r * p.heads2 + head - p.heads;
        out2[p.out2_off + cache_index(kv_row, ca)] = a * rot.c - b * rot.s;
        out2[p.out2_off + cache_index(kv_row, cb)] = a * rot.s + b * rot.c;
    } else {
        let kv_row = r * p.heads2 + head - p.heads - p.heads2;
        vc[p.vc_off + cache_index(kv_row, ca)] = a;
        vc[p.vc_off + cache_index(kv_row, cb)] = b;
    }
}
