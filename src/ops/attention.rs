//! Causal grouped-query attention over a KV cache, and KV-cache writes
//! (shaders/attention.wgsl; the cache write is a strided copy).

use super::{chunks, each_positions, At, EACH, EACH_PER_DISPATCH};
use super::elementwise::{copy_strided, copy_strided_pair, View};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::{ATTENTION, ATTENTION_LANES};

/// The largest head dimension: one thread per output element of a head.
pub const MAX_HEAD_DIM: usize = 256;

/// Query rows (token, head pairs of one kv head) per workgroup of the tiled kernel.
const TILE_ROWS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    heads: u32,
    group: u32,
    d: u32,
    q_tstride: u32,
    kv_hstride: u32,
    pos: u32,
    h0: u32,
    kv0: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    out_off: u32,
    scale: f32,
    q_bstride: u32,
    kv_bstride: u32,
    /// Query tokens in the dispatch (the tiled kernel's rows are tokens × group).
    tokens: u32,
    /// Sequence z's position where `pos` is `EACH`.
    each: [u32; EACH_PER_DISPATCH],
}

fn dims4(op: &'static str, name: &str, t: &Tensor, layout: &str) -> Result<[usize; 4]> {
    t.shape().try_into().map_err(|_| Error::shape(op, format!("{name} {:?} is not {layout}", t.shape())))
}

/// Checks the caches against q ([B, T, Hq, D]) and returns [Hkv, S].
fn check_caches(op: &'static str, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize) -> Result<[usize; 2]> {
    let [b, t, hq, d] = dims4(op, "q", q, "[B, T, Hq, D]")?;
    let [kb, hkv, s, kd] = dims4(op, "k_cache", k_cache, "[B, Hkv, S, D]")?;
    if v_cache.shape() != k_cache.shape() {
        return Err(Error::shape(op, format!("v_cache {:?} differs from k_cache {:?}", v_cache.shape(), k_cache.shape())));
    }
    if kb != b || kd != d {
        return Err(Error::shape(op, format!("q {:?} and k_cache {:?} differ in batch or head dimension", q.shape(), k_cache.shape())));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(Error::shape(op, format!("{hq} query heads are not a multiple of {hkv} kv heads")));
    }
    if pos0 + t > s {
        return Err(Error::shape(op, format!("positions up to {} do not fit a cache of {s} rows", pos0 + t)));
    }
    if d > MAX_HEAD_DIM {
        return Err(Error::shape(op, format!("head dimension {d} is above the kernel's {MAX_HEAD_DIM}")));
    }
    Ok([hkv, s])
}

/// Which kernels compute attention, forward and backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// One workgroup per (query token, query head), keys spread over its threads: the most
    /// parallel for a decoded token, whose one query row per head would leave a tile idle.
    PerQuery,
    /// One workgroup per 16 (token, head) rows of a kv head, each key read once for all of
    /// them; needs every query head in one dispatch and a head dimension of at most 64.
    Tiled,
    /// The tiled kernels' work split in one 8-lane subgroup, without workgroup memory
    /// (shaders/attention_lanes.wgsl): for software adapters, where subgroups are exactly 8
    /// wide (`Gpu::subgroup_lanes`).
    Lanes,
}

impl AttentionKernel {
    /// Every kernel family, for the tests; not every device runs every one (`runs_on`).
    pub const ALL: [AttentionKernel; 3] = [AttentionKernel::PerQuery, AttentionKernel::Tiled, AttentionKernel::Lanes];

    /// Whether the kernel's shader builds on this device.
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        self != AttentionKernel::Lanes || gpu.subgroup_lanes()
    }
}

/// Head dimensions the tiled kernel handles (its threads own 4 elements of a row of 16 threads).
pub const TILED_MAX_HEAD_DIM: usize = 64;

/// The fewest query tokens per sequence for which `attention` takes the tiled kernel: from
/// there a tile of 16 rows is full for any group of ≥ 2 query heads per kv head.
pub const TILED_MIN_TOKENS: usize = 8;

/// out = softmax(scale · q kᵀ) v, causally: q: [B, T, Hq, D], caches: [B, Hkv, S, D].
/// Query t of sequence b is at position pos0 + t and sees cache rows 0 ..= pos0 + t of its
/// own sequence; query head h reads kv head h / (Hq / Hkv). Returns [B, T, Hq, D].
pub fn attention(gpu: &Gpu, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize, scale: f32) -> Result<Tensor> {
    attention_with(gpu, q, k_cache, v_cache, pos0, scale, kernel_for(gpu, q))
}

/// The kernel for q: [B, T, Hq, D]. Where the device runs the lanes kernels, those at every
/// length: on lavapipe they beat the per-query kernel on decoded tokens and short prompts too
/// (a MEMIT batch 1.14× faster than with lanes from 8 tokens only, decoding no slower;
/// docs/results.md). Elsewhere tiled from TILED_MIN_TOKENS query tokens per sequence.
pub fn kernel_for(gpu: &Gpu, q: &Tensor) -> AttentionKernel {
    let tokens = q.shape().get(1).copied().unwrap_or(0);
    if per_query_only() {
        AttentionKernel::PerQuery
    } else if AttentionKernel::Lanes.runs_on(gpu) {
        AttentionKernel::Lanes
    } else if tokens >= TILED_MIN_TOKENS {
        AttentionKernel::Tiled
    } else {
        AttentionKernel::PerQuery
    }
}

/// `REVIVE_PER_QUERY_ATTENTION=1`: the per-query kernel everywhere, to compare the two in one
/// run (`revive bench forward` with and without it).
fn per_query_only() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| crate::gpu::env_flag("REVIVE_PER_QUERY_ATTENTION"))
}

/// `attention` with the kernel named; `Tiled` and `Lanes` fall back to `PerQuery` where the
/// head dimension is above 64 or the query heads do not fit one dispatch. `Lanes` on a device
/// without 8-wide subgroups is an error.
pub fn attention_with(gpu: &Gpu, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize, scale: f32, kernel: AttentionKernel) -> Result<Tensor> {
    let out = gpu.empty(q.shape())?;
    attention_at_into(gpu, q, k_cache, v_cache, At::From(pos0), scale, kernel, &out)?;
    Ok(out)
}

/// `attention_with` writing into `out` (q's shape, or a view of a larger tensor), with the
/// queries' positions: from one position for all sequences, or one query token per sequence
/// (q: [B, 1, Hq, D]), sequence s at `positions[s]` and seeing its own cache rows
/// 0 ..= positions[s]. Those take one dispatch per `EACH_PER_DISPATCH` sequences where a
/// sequence's heads fit one, else one per sequence.
#[allow(clippy::too_many_arguments)]
pub fn attention_at_into(gpu: &Gpu, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, at: At, scale: f32, kernel: AttentionKernel, out: &Tensor) -> Result<()> {
    const OP: &str = "attention";
    let [b, t, hq, d] = dims4(OP, "q", q, "[B, T, Hq, D]")?;
    if let At::Each(ps) = at {
        if t != 1 || ps.len() != b {
            return Err(Error::shape(OP, format!("{} positions for q {:?}: sequences at their own positions take one query token each", ps.len(), q.shape())));
        }
    }
    // The caches must hold every query's rows: checked as for tokens up to the last position.
    let last = at.end(t).saturating_sub(t);
    let [hkv, s] = check_caches(OP, q, k_cache, v_cache, last)?;
    if !kernel.runs_on(gpu) {
        return Err(Error::Gpu(gpu.lanes_missing("attention: the lanes kernel")));
    }
    if out.shape() != q.shape() {
        return Err(Error::shape(OP, format!("out {:?} is not q's shape {:?}", out.shape(), q.shape())));
    }
    if [q, k_cache, v_cache].iter().any(|t| t.shares_buffer(out)) {
        return Err(Error::shape(OP, "out shares a buffer with q or a cache, which the kernel reads while it writes out"));
    }
    if out.numel() == 0 {
        return Ok(());
    }
    let group = hq / hkv;
    let max_elems = Tensor::max_binding_elems(gpu);
    let max_wg = gpu.split_limits().max_workgroups as usize;
    // kv rows one dispatch binds for `heads` query heads: the kv heads they can straddle, each
    // [S, D] block whole except the last, cut after the last position.
    let kv_span = |kv_heads: usize| (kv_heads - 1) * s * d + at.end(t) * d;
    let fits = |heads: usize| heads <= max_wg && heads * d <= max_elems && kv_span((heads - 1).div_ceil(group) + 1) <= max_elems;
    let Some(mut heads_per) = (1..=hq).rev().find(|&n| fits(n)) else {
        return Err(Error::TooLarge { op: OP, detail: format!("{} keys of width {d} exceed one binding ({max_elems} values)", at.end(t)) });
    };
    if heads_per >= group {
        // Whole kv groups per dispatch: no kv block is bound twice.
        heads_per -= heads_per % group;
    }
    let tokens_per = (max_wg / heads_per).min((max_elems - heads_per * d) / (hq * d) + 1).max(1);
    // The tiled kernel's workgroups: (token, head) tiles × kv heads × sequences, every head
    // in the dispatch (tokens_per · group ≤ max_wg · group / hq tiles when heads_per = hq).
    let tiled = kernel != AttentionKernel::PerQuery && d <= TILED_MAX_HEAD_DIM && heads_per == hq;
    // Where one sequence is one dispatch, several go in one (a row of workgroups each): an
    // edit's batch of a few hundred prompts is then a dispatch per layer, not hundreds.
    let (seq_q, seq_kv) = (t * hq * d, hkv * s * d);
    let seqs_per = if heads_per == hq && tokens_per >= t { max_wg.min(max_elems / seq_q).min(max_elems / seq_kv).max(1) } else { 1 };
    let seqs_per = if matches!(at, At::Each(_)) { seqs_per.min(EACH_PER_DISPATCH) } else { seqs_per };
    for (b0, bn) in chunks(b, seqs_per) {
        // The dispatch's positions: one for all its sequences, or each its own.
        let (pos, each, end) = match at {
            At::From(pos0) => (pos0, [0; EACH_PER_DISPATCH], pos0 + t),
            At::Each(ps) if bn == 1 => (ps[b0], [0; EACH_PER_DISPATCH], ps[b0] + 1),
            At::Each(ps) => (EACH as usize, each_positions(ps, b0, bn), At::Each(&ps[b0..b0 + bn]).end(1)),
        };
        for (h0, hn) in chunks(hq, heads_per) {
            let (kv0, kv1) = (h0 / group, (h0 + hn - 1) / group);
            for (t0, tn) in chunks(t, tokens_per) {
                let q_start = ((b0 * t + t0) * hq + h0) * d;
                let q_len = (bn - 1) * seq_q + (tn - 1) * hq * d + hn * d;
                let kv_start = (b0 * hkv + kv0) * s * d;
                // Whole kv blocks where they fit one binding: the range then does not move as
                // decoding advances, so each step reuses the last step's bind group.
                let tight = (bn - 1) * seq_kv + (kv1 - kv0) * s * d + (end - t + t0 + tn) * d;
                let whole = (bn - 1) * seq_kv + (kv1 - kv0 + 1) * s * d;
                let kv_len = if whole <= max_elems { whole } else { tight };
                let (qb, q_off) = q.bind(gpu, q_start, q_len)?;
                let (kb, k_off) = k_cache.bind(gpu, kv_start, kv_len)?;
                let (vb, v_off) = v_cache.bind(gpu, kv_start, kv_len)?;
                let (ob, out_off) = out.bind(gpu, q_start, q_len)?;
                let meta = Meta {
                    heads: hn as u32,
                    group: group as u32,
                    d: d as u32,
                    q_tstride: (hq * d) as u32,
                    kv_hstride: (s * d) as u32,
                    // EACH only where the tokens are one chunk (t = 1), so t0 = 0.
                    pos: (pos + t0) as u32,
                    h0: h0 as u32,
                    kv0: kv0 as u32,
                    q_off,
                    k_off,
                    v_off,
                    out_off,
                    scale,
                    q_bstride: seq_q as u32,
                    kv_bstride: seq_kv as u32,
                    tokens: tn as u32,
                    each,
                };
                let tiles = [(tn * group).div_ceil(TILE_ROWS) as u32, hkv as u32, bn as u32];
                let (shader, entry, groups) = match kernel {
                    _ if !tiled => (ATTENTION, "attention", [(tn * hn) as u32, bn as u32, 1]),
                    AttentionKernel::Lanes => (ATTENTION_LANES, "attention_lanes", tiles),
                    _ => (ATTENTION, "attention_tiled", tiles),
                };
                gpu.dispatch(shader, entry, &[], bytemuck::bytes_of(&meta), &[qb, kb, vb, ob], groups)?;
            }
        }
    }
    Ok(())
}

/// Writes src: [B, T, Hkv, D] (new keys or values in projection layout) into rows
/// pos0 .. pos0 + T of cache: [B, Hkv, S, D].
pub fn write_kv(gpu: &Gpu, src: &Tensor, cache: &Tensor, pos0: usize) -> Result<()> {
    let dst = cache_rows(src, cache, pos0)?;
    copy_strided(gpu, src, View::dense(src.shape()), cache, dst, src.shape())
}

/// `write_kv` of a layer's keys and values at once: one dispatch where they fit.
pub fn write_kv_pair(gpu: &Gpu, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize) -> Result<()> {
    let dst = check_kv_write(k, v, k_cache, v_cache, pos0)?;
    copy_strided_pair(gpu, [k, v], View::dense(k.shape()), [k_cache, v_cache], dst, k.shape())
}

/// Checks a write of keys and values [B, T, Hkv, D] into their caches [B, Hkv, S, D] at rows
/// pos0 .. pos0 + T; returns where they go.
pub(crate) fn check_kv_write(k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize) -> Result<View> {
    if v.shape() != k.shape() || v_cache.shape() != k_cache.shape() {
        return Err(Error::shape("write_kv", format!("values {:?} and keys {:?}, or their caches {:?} and {:?}, differ", v.shape(), k.shape(), v_cache.shape(), k_cache.shape())));
    }
    cache_rows(k, k_cache, pos0)
}

/// Where rows pos0 .. pos0 + T of src: [B, T, Hkv, D] go in cache: [B, Hkv, S, D].
fn cache_rows(src: &Tensor, cache: &Tensor, pos0: usize) -> Result<View> {
    const OP: &str = "write_kv";
    let [b, t, h, d] = dims4(OP, "src", src, "[B, T, Hkv, D]")?;
    let [cb, ch, s, cd] = dims4(OP, "cache", cache, "[B, Hkv, S, D]")?;
    if (cb, ch, cd) != (b, h, d) {
        return Err(Error::shape(OP, format!("src {:?} does not match cache {:?}", src.shape(), cache.shape())));
    }
    if pos0 + t > s {
        return Err(Error::shape(OP, format!("rows {pos0}..{} do not fit a cache of {s} rows", pos0 + t)));
    }
    Ok(View { offset: pos0 * d, strides: [h * s * d, d, s * d, 1] })
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdMeta {
    group: u32,
    d: u32,
    q_tstride: u32,
    o_tstride: u32,
    pos: u32,
    t_count: u32,
    t_first: u32,
    j0: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    do_off: u32,
    st_off: u32,
    a_off: u32,
    b_off: u32,
    scale: f32,
    /// Per sequence (workgroup z) and per kv group (workgroup y), in elements: q/dout/dq,
    /// k/v, stats, dk/dv. Zero where a dispatch covers one sequence's one group.
    strides: [u32; 8],
}

/// Gradients of `attention` w.r.t. q and the keys/values, for the upstream gradient d_out:
/// [B, T, Hq, D]. Returns (dq [B, T, Hq, D], dk [B, L, Hkv, D], dv [B, L, Hkv, D]) with
/// L = pos0 + T: dk and dv are token-major, as the K/V projections produce them (cache rows
/// at and past L are not seen by any query and get no gradient). dk and dv sum over the query
/// heads of each kv group. The scores are recomputed; the result is deterministic.
pub fn attention_bwd(
    gpu: &Gpu,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos0: usize,
    scale: f32,
    d_out: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let kernel = kernel_for(gpu, q);
    attention_bwd_with(gpu, q, k_cache, v_cache, pos0, 0, scale, d_out, kernel)
}

/// `attention_bwd` with the kernels named (`Tiled` or `Lanes` where the head dimension is at
/// most 64; the dk/dv pass so where whole sequences fit a dispatch) and dk/dv only of the keys from
/// `keys_from` (≤ pos0) on: [B, L − keys_from, Hkv, D]. With keys_from = pos0, where the cache
/// rows before pos0 are constants (a prefix computed once), the earlier keys' share is neither
/// computed nor allocated.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_with(
    gpu: &Gpu,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos0: usize,
    keys_from: usize,
    scale: f32,
    d_out: &Tensor,
    kernel: AttentionKernel,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [b, t, _, d] = dims4("attention_bwd", "q", q, "[B, T, Hq, D]")?;
    let hkv = k_cache.shape().get(1).copied().unwrap_or(0);
    let lo = (pos0 + t).saturating_sub(keys_from);
    let dq = gpu.empty(q.shape())?;
    let dk = gpu.empty(&[b, lo, hkv, d])?;
    let dv = gpu.empty(&[b, lo, hkv, d])?;
    let out = KvGrads { k: (&dk, 0), v: (&dv, 0), tstride: hkv * d };
    attention_bwd_into(gpu, q, k_cache, v_cache, pos0, keys_from, scale, d_out, kernel, &dq, out)?;
    Ok((dq, dk, dv))
}

/// Where `attention_bwd_into` writes the keys' and values' gradients: token (b, j)'s Hkv heads
/// of D at element `k.1 + (b·L' + j)·tstride` of `k.0` (dk) and likewise in `v` (dv), L' the
/// keys asked for. Dense [B, L', Hkv, D] tensors have tstride Hkv·D; a stacked q/k/v gradient
/// [B·L', (Hq + 2·Hkv)·D] takes both at its rows' key and value columns, so that one product
/// with the stacked weights follows. There dk and dv bind overlapping ranges of one buffer as
/// two writable bindings (their rows interleave): wgpu allows it, and each element has one
/// writer; the WebGPU specification's rule against aliased writable bindings, which wgpu does
/// not enforce, would refuse it in a browser.
pub struct KvGrads<'a> {
    pub k: (&'a Tensor, usize),
    pub v: (&'a Tensor, usize),
    pub tstride: usize,
}

/// `attention_bwd_with` into given outputs: dq (q's shape) and the keys' and values' gradients
/// placed as `out` says.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_into(
    gpu: &Gpu,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos0: usize,
    keys_from: usize,
    scale: f32,
    d_out: &Tensor,
    kernel: AttentionKernel,
    dq: &Tensor,
    out: KvGrads,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    let [b, t, hq, d] = dims4(OP, "q", q, "[B, T, Hq, D]")?;
    let [hkv, s] = check_caches(OP, q, k_cache, v_cache, pos0)?;
    if d_out.shape() != q.shape() || dq.shape() != q.shape() {
        return Err(Error::shape(OP, format!("d_out {:?} and dq {:?} must match q {:?}", d_out.shape(), dq.shape(), q.shape())));
    }
    if !kernel.runs_on(gpu) {
        return Err(Error::Gpu(gpu.lanes_missing("attention_bwd: the lanes kernels")));
    }
    if keys_from > pos0 {
        return Err(Error::shape(OP, format!("the gradient of keys from {keys_from} on was asked for, past the queries' first position {pos0}")));
    }
    let l = pos0 + t;
    // The keys whose gradients are wanted: rows keys_from .. l of the cache.
    let lo = l - keys_from;
    let ts = out.tstride;
    let rows = b * lo;
    for (name, (tensor, at)) in [("dk", out.k), ("dv", out.v)] {
        if ts < hkv * d || (rows > 0 && at + (rows - 1) * ts + hkv * d > tensor.numel()) {
            return Err(Error::shape(OP, format!("{name}: {rows} rows of {hkv} heads of {d}, {ts} apart from element {at}, do not fit {:?}", tensor.shape())));
        }
    }
    let ((dk, k_at), (dv, v_at)) = (out.k, out.v);
    if q.numel() == 0 {
        return Ok(());
    }
    // Per query row: log-sum-exp and dO.o, written by the dq pass and read by the dk/dv pass.
    let stats = gpu.empty(&[b, t, hq, 2])?;
    let group = hq / hkv;
    let max_elems = Tensor::max_binding_elems(gpu);
    let max_wg = gpu.split_limits().max_workgroups as usize;
    // One dispatch covers one kv group of one sequence: its key block up to L, and all its
    // query rows (the dk/dv pass needs every query that sees a key).
    let q_span = |tn: usize| (tn - 1) * hq * d + group * d;
    if group > max_wg || l * d > max_elems || q_span(t) > max_elems {
        return Err(Error::TooLarge {
            op: OP,
            detail: format!("{t} queries x {group} heads and {l} keys of width {d} do not fit one dispatch and binding"),
        });
    }
    let tokens_per = (max_wg / group).max(1);
    // The tiled kernels: dq in tiles of (token, head) rows of one kv group along x (t_count is
    // the dispatch's tokens), dk/dv in tiles of keys where a dispatch binds whole sequences.
    let tiled = kernel != AttentionKernel::PerQuery && d <= TILED_MAX_HEAD_DIM;
    let lanes = tiled && kernel == AttentionKernel::Lanes;
    let dq_kernel = |tn: usize| match (tiled, lanes) {
        (true, true) => (ATTENTION_LANES, "attention_bwd_dq_lanes", (tn * group).div_ceil(TILE_ROWS) as u32),
        (true, false) => (ATTENTION, "attention_bwd_dq_tiled", (tn * group).div_ceil(TILE_ROWS) as u32),
        _ => (ATTENTION, "attention_bwd_dq", (tn * group) as u32),
    };
    // Where a sequence's queries and keys each fit one dispatch's row of workgroups, the whole
    // batch goes in two dispatches (z the sequence, y the kv group): an edit's batch of a few
    // hundred prompts is otherwise 2 × sequences × kv heads dispatches per layer.
    let per_seq = [t * hq * d, hkv * s * d, t * hq * 2, lo * ts];
    let whole_seqs = t * group <= max_wg && l <= max_wg && hkv <= max_wg && per_seq.iter().all(|&n| n <= max_elems);
    let meta0 = BwdMeta {
        group: group as u32,
        d: d as u32,
        q_tstride: (hq * d) as u32,
        o_tstride: ts as u32,
        pos: 0,
        t_count: t as u32,
        t_first: 0,
        j0: 0,
        q_off: 0,
        k_off: 0,
        v_off: 0,
        do_off: 0,
        st_off: 0,
        a_off: 0,
        b_off: 0,
        scale,
        strides: [0; 8],
    };
    if whole_seqs {
        let seqs_per = max_wg.min(per_seq.iter().map(|&n| max_elems / n).min().unwrap_or(1)).max(1);
        let [q_seq, kv_seq, st_seq, o_seq] = per_seq;
        let strides = [q_seq, kv_seq, st_seq, o_seq, group * d, s * d, group * 2, d].map(|x| x as u32);
        for (b0, bn) in chunks(b, seqs_per) {
            let (qb, q_off) = q.bind(gpu, b0 * per_seq[0], bn * per_seq[0])?;
            let (db, do_off) = d_out.bind(gpu, b0 * per_seq[0], bn * per_seq[0])?;
            let (kb, k_off) = k_cache.bind(gpu, b0 * per_seq[1], bn * per_seq[1])?;
            let (vb, v_off) = v_cache.bind(gpu, b0 * per_seq[1], bn * per_seq[1])?;
            let (sb, st_off) = stats.bind(gpu, b0 * per_seq[2], bn * per_seq[2])?;
            let (qgb, qg_off) = dq.bind(gpu, b0 * per_seq[0], bn * per_seq[0])?;
            let meta = BwdMeta { pos: pos0 as u32, q_off, k_off, v_off, do_off, st_off, a_off: qg_off, strides, ..meta0 };
            let (shader, entry, x) = dq_kernel(t);
            gpu.dispatch(shader, entry, &[], bytemuck::bytes_of(&meta), &[qb, kb, vb, db, sb, qgb], [x, hkv as u32, bn as u32])?;
            // The chunk's output rows: the last one ends at its kv heads.
            let o_len = (bn * lo - 1) * ts + hkv * d;
            let (ab, a_off) = dk.bind(gpu, k_at + b0 * per_seq[3], o_len)?;
            let (bb, b_off) = dv.bind(gpu, v_at + b0 * per_seq[3], o_len)?;
            // The tiled kernel reads key j at row j of its sequence's block; the other reads
            // key j0 + x at row x, so its bindings start at key j0.
            let (shader, entry, x, kv_skip) = match (tiled, lanes) {
                (true, true) => (ATTENTION_LANES, "attention_bwd_dkv_lanes", lo.div_ceil(TILE_ROWS) as u32, 0),
                (true, false) => (ATTENTION, "attention_bwd_dkv_tiled", lo.div_ceil(TILE_ROWS) as u32, 0),
                _ => (ATTENTION, "attention_bwd_dkv", lo as u32, keys_from * d),
            };
            let (k_off, v_off) = (k_off + kv_skip as u32, v_off + kv_skip as u32);
            let meta = BwdMeta { pos: pos0 as u32, j0: keys_from as u32, q_off, k_off, v_off, do_off, st_off, a_off, b_off, strides, ..meta0 };
            gpu.dispatch(shader, entry, &[], bytemuck::bytes_of(&meta), &[qb, kb, vb, db, sb, ab, bb], [x, hkv as u32, bn as u32])?;
        }
        return Ok(());
    }
    for bi in 0..b {
        for g in 0..hkv {
            let kv_start = (bi * hkv + g) * s * d;
            let h0 = g * group;
            for (t0, tn) in chunks(t, tokens_per) {
                let q_start = ((bi * t + t0) * hq + h0) * d;
                let st_start = ((bi * t + t0) * hq + h0) * 2;
                let (qb, q_off) = q.bind(gpu, q_start, q_span(tn))?;
                let (db, do_off) = d_out.bind(gpu, q_start, q_span(tn))?;
                let (kb, k_off) = k_cache.bind(gpu, kv_start, (pos0 + t0 + tn) * d)?;
                let (vb, v_off) = v_cache.bind(gpu, kv_start, (pos0 + t0 + tn) * d)?;
                let (sb, st_off) = stats.bind(gpu, st_start, (tn - 1) * hq * 2 + group * 2)?;
                let (ab, a_off) = dq.bind(gpu, q_start, q_span(tn))?;
                let meta = BwdMeta { pos: (pos0 + t0) as u32, t_count: tn as u32, q_off, k_off, v_off, do_off, st_off, a_off, ..meta0 };
                let binds = [qb, kb, vb, db, sb, ab];
                let (shader, entry, x) = dq_kernel(tn);
                gpu.dispatch(shader, entry, &[], bytemuck::bytes_of(&meta), &binds, [x, 1, 1])?;
            }
            let keys_per = max_wg.min((max_elems - d) / ts + 1);
            for (j0, jn) in chunks(lo, keys_per) {
                let j0 = keys_from + j0;
                // Queries at or after the first key of this piece see it.
                let t_first = j0.saturating_sub(pos0);
                let q_start = ((bi * t + t_first) * hq + h0) * d;
                let st_start = ((bi * t + t_first) * hq + h0) * 2;
                let (qb, q_off) = q.bind(gpu, q_start, q_span(t - t_first))?;
                let (db, do_off) = d_out.bind(gpu, q_start, q_span(t - t_first))?;
                let (kb, k_off) = k_cache.bind(gpu, kv_start + j0 * d, jn * d)?;
                let (vb, v_off) = v_cache.bind(gpu, kv_start + j0 * d, jn * d)?;
                let (sb, st_off) = stats.bind(gpu, st_start, (t - t_first - 1) * hq * 2 + group * 2)?;
                let o_start = (bi * lo + j0 - keys_from) * ts + g * d;
                let o_len = (jn - 1) * ts + d;
                let (ab, a_off) = dk.bind(gpu, k_at + o_start, o_len)?;
                let (bb, b_off) = dv.bind(gpu, v_at + o_start, o_len)?;
                let meta = BwdMeta {
                    pos: pos0 as u32,
                    t_first: t_first as u32,
                    j0: j0 as u32,
                    q_off,
                    k_off,
                    v_off,
                    do_off,
                    st_off,
                    a_off,
                    b_off,
                    ..meta0
                };
                let binds = [qb, kb, vb, db, sb, ab, bb];
                gpu.dispatch(ATTENTION, "attention_bwd_dkv", &[], bytemuck::bytes_of(&meta), &binds, [jn as u32, 1, 1])?;
            }
        }
    }
    Ok(())
}
