//! Rotary position embedding (shaders/rope.wgsl).

use super::{attention, chunks, each_positions, groups, At, EACH, EACH_PER_DISPATCH, WG};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::{Rope, RopeStyle};
use crate::shaders::ROPE;
use super::elementwise::{copy_strided, View};
use super::norm;

/// The largest head dimension: the uniform holds D/2 frequencies.
pub const MAX_HEAD_DIM: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    pairs: u32,
    half: u32,
    heads: u32,
    seq: u32,
    row0: u32,
    pos0: u32,
    in_off: u32,
    out_off: u32,
    adjacent: u32,
    inverse: u32,
    pairs2: u32,
    heads2: u32,
    cap: u32,
    in2_off: u32,
    out2_off: u32,
    v_off: u32,
    vc_off: u32,
    /// norm_qkv_rope_kv: the rows' width and the norm's epsilon.
    cols: u32,
    eps: f32,
    /// rope_kv: where not 0, q, k and v are parts of one stacked product, rows this far apart.
    tstride: u32,
    /// Sequence b's position where `pos0` is `EACH`.
    each: [u32; EACH_PER_DISPATCH],
    inv_freq: [f32; MAX_HEAD_DIM / 2],
}

/// Rotates x: [B, T, H, D] into a new tensor; token t is at position pos0 + t and pair i turns
/// at `rot.inv_freq[i]` (D/2 of them). Angles are f32 products pos · inv_freq (see shaders/rope.wgsl).
pub fn rope(gpu: &Gpu, x: &Tensor, pos0: usize, rot: &Rope) -> Result<Tensor> {
    rotate(gpu, "rope", "x", x, pos0, rot)
}

/// The gradient of `rope` w.r.t. its input: dy: [B, T, H, D] rotated by the negated angles
/// (the rotation's transpose), same layout and pairing.
pub fn rope_bwd(gpu: &Gpu, dy: &Tensor, pos0: usize, rot: &Rope) -> Result<Tensor> {
    rotate(gpu, "rope_bwd", "dy", dy, pos0, rot)
}

/// `rope` of a layer's queries q: [B, T, Hq, D] and keys k: [B, T, Hkv, D] at once: one
/// dispatch where both fit one binding and their pairs one dispatch, else one each. The same
/// bits as two `rope` calls.
pub fn rope_pair(gpu: &Gpu, q: &Tensor, k: &Tensor, pos0: usize, rot: &Rope) -> Result<(Tensor, Tensor)> {
    let [bq, tq, hq, dq] = check("rope", "q", q.shape(), pos0)?;
    let [bk, tk, hk, dk] = check("rope", "k", k.shape(), pos0)?;
    let max_elems = Tensor::max_binding_elems(gpu);
    let pairs = (q.numel() + k.numel()) / 2;
    let fits = q.numel() <= max_elems && k.numel() <= max_elems && pairs <= gpu.split_limits().max_workgroups as usize * WG;
    if (bq, tq, dq) != (bk, tk, dk) || !fits || q.numel() == 0 || k.numel() == 0 {
        return Ok((rope(gpu, q, pos0, rot)?, rope(gpu, k, pos0, rot)?));
    }
    let (qo, ko) = (gpu.empty(q.shape())?, gpu.empty(k.shape())?);
    let meta = Meta { pairs: (q.numel() / 2) as u32, pairs2: (k.numel() / 2) as u32, heads2: hk as u32, ..meta("rope", tq, hq, dq, pos0, rot)? };
    let mut binds = Vec::with_capacity(4);
    for t in [q, &qo, k, &ko] {
        // The paired kernel takes no offsets: a view off the binding alignment goes the
        // separate way.
        match t.bind(gpu, 0, t.numel())? {
            (b, 0) => binds.push(b),
            _ => return Ok((rope(gpu, q, pos0, rot)?, rope(gpu, k, pos0, rot)?)),
        }
    }
    gpu.dispatch(ROPE, "rope_pair", &[], bytemuck::bytes_of(&meta), &binds, [groups(pairs, WG), 1, 1])?;
    Ok((qo, ko))
}

/// A layer's step before attention: the queries q: [B, T, Hq, D] rotated into a new tensor
/// (returned), the keys k: [B, T, Hkv, D] rotated into rows pos0 .. pos0 + T of k_cache:
/// [B, Hkv, S, D], the values v (k's shape) copied into v_cache. One dispatch where every
/// tensor fits one binding and the work one dispatch; else `rope_pair` and
/// `attention::write_kv_pair`. The same values either way: the rotation's arithmetic is the
/// same, the copies exact.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize, rot: &Rope) -> Result<Tensor> {
    rope_kv_at(gpu, q, k, v, k_cache, v_cache, At::From(pos0), rot)
}

/// `rope_kv` with the tokens' positions: from one position for all sequences, or one token per
/// sequence (q, k, v: [B, 1, H, D]), sequence s at `positions[s]`, its key and value written
/// to that row of its caches. Those take one dispatch per `EACH_PER_DISPATCH` sequences.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_at(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, at: At, rot: &Rope) -> Result<Tensor> {
    const OP: &str = "rope_kv";
    let t = q.shape().get(1).copied().unwrap_or(0);
    let last = at.end(t).saturating_sub(t);
    let [bq, tq, hq, dq] = check(OP, "q", q.shape(), last)?;
    let [bk, tk, hk, dk] = check(OP, "k", k.shape(), last)?;
    attention::check_kv_write(k, v, k_cache, v_cache, last)?;
    let ps = match at {
        At::From(pos0) => return rope_kv_from(gpu, q, k, v, k_cache, v_cache, pos0, rot),
        At::Each(ps) => ps,
    };
    if tq != 1 || ps.len() != bq {
        return Err(Error::shape(OP, format!("{} positions for q {:?}: sequences at their own positions take one token each", ps.len(), q.shape())));
    }
    if (bq, tq, dq) != (bk, tk, dk) {
        return Err(Error::shape(OP, format!("q {:?} and k {:?} differ in batch, tokens or head dimension", q.shape(), k.shape())));
    }
    let qo = gpu.empty(q.shape())?;
    let cap = k_cache.shape()[2];
    let (q_seq, kv_seq, cache_seq) = (hq * dq, hk * dk, hk * cap * dk);
    // A dispatch's sequences: rows of q, k, v and blocks of the caches, each a contiguous range.
    let part = |t: &Tensor, per: usize, b0: usize, bn: usize, shape: [usize; 4]| t.view(b0 * per, &[bn, shape[1], shape[2], shape[3]]);
    let (qs, ks, cs) = ([bq, 1, hq, dq], [bq, 1, hk, dk], [bq, hk, cap, dk]);
    for (b0, bn) in chunks(bq, EACH_PER_DISPATCH) {
        let (q_part, o_part) = (part(q, q_seq, b0, bn, qs)?, part(&qo, q_seq, b0, bn, qs)?);
        let (k_part, v_part) = (part(k, kv_seq, b0, bn, ks)?, part(v, kv_seq, b0, bn, ks)?);
        let (kc_part, vc_part) = (part(k_cache, cache_seq, b0, bn, cs)?, part(v_cache, cache_seq, b0, bn, cs)?);
        let ins = KvIn { q: (&q_part, 0), k: (&k_part, 0), v: (&v_part, 0), tstride: 0 };
        if !rope_kv_dispatch(gpu, &ins, [bn, 1, hq, hk, dq], [&kc_part, &vc_part], &o_part, EACH as usize, each_positions(ps, b0, bn), rot)? {
            // Too large for one dispatch: a sequence at a time at its own position.
            for (s, &pos) in ps.iter().enumerate().skip(b0).take(bn) {
                let one = |t: &Tensor, per: usize, shape: [usize; 4]| part(t, per, s, 1, shape);
                let [q1, k1, v1] = [one(q, q_seq, qs)?, one(k, kv_seq, ks)?, one(v, kv_seq, ks)?];
                let q1 = rope_kv_from(gpu, &q1, &k1, &v1, &one(k_cache, cache_seq, cs)?, &one(v_cache, cache_seq, cs)?, pos, rot)?;
                gpu.copy_into(&q1, &one(&qo, q_seq, qs)?)?;
            }
        }
    }
    Ok(qo)
}

/// The heads of a stacked q/k/v product: query heads, kv heads, head dimension.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
}

/// A layer's step before attention for a few rows x: [B·T, cols] (a decoded token), on the
/// stacked product: rms_norm(x, norm_w, eps) · qkvᵀ (qkv: [(Hq + 2·Hkv)·D, cols], queries then
/// keys then values), then `rope_kv_at` (the queries rotated and returned as [B, T, Hq, D], the
/// keys rotated and the values copied into their caches [B, Hkv, S, D]). One dispatch
/// (`norm_qkv_rope_kv` in shaders/rope.wgsl, a workgroup per rotated pair of a row) where every
/// tensor fits one binding and the rows one dispatch (at most 16 sequences at their own
/// positions); else the norm, the product and `rope_kv_at` apart (the kernels that split to
/// fit any adapter).
#[allow(clippy::too_many_arguments)]
pub fn norm_qkv_rope_kv(
    gpu: &Gpu,
    x: &Tensor,
    norm_w: &Tensor,
    eps: f32,
    qkv: &Tensor,
    heads: Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    at: At,
    rot: &Rope,
) -> Result<Tensor> {
    const OP: &str = "norm_qkv_rope_kv";
    let (&[rows, cols], &[n, m_cols]) = (x.shape(), qkv.shape()) else {
        return Err(Error::shape(OP, format!("x {:?} and the stacked matrix {:?} must both be 2-D", x.shape(), qkv.shape())));
    };
    if m_cols != cols || norm_w.shape() != [cols] {
        return Err(Error::shape(OP, format!("x {:?}, norm weight {:?} and matrix {:?} do not agree", x.shape(), norm_w.shape(), qkv.shape())));
    }
    let Stacked { b, t, cap, each } = check_stacked(OP, rows, n, heads, k_cache, v_cache, at)?;
    let Heads { q: hq, kv: hk, dim: d } = heads;
    let q_elems = rows * hq * d;
    if q_elems == 0 {
        return gpu.empty(&[b, t, hq, d]);
    }
    let pairs = n / 2;
    let limits = gpu.split_limits();
    let max_elems = Tensor::max_binding_elems(gpu);
    let fits = [x.numel(), qkv.numel(), k_cache.numel(), q_elems].iter().all(|&n| n <= max_elems)
        && pairs <= limits.max_workgroups as usize
        && rows <= limits.max_workgroups as usize
        && each.is_none_or(|ps| ps.len() <= EACH_PER_DISPATCH);
    if !fits {
        // The general kernels, which split to any limits.
        let stacked = super::matmul::gemm(gpu, &norm::rms_norm(gpu, x, norm_w, eps)?, qkv, None, super::matmul::Gemm { trans_b: true, ..Default::default() })?;
        return rope_kv_stacked(gpu, &stacked, heads, k_cache, v_cache, at, rot);
    }
    let qo = gpu.empty(&[b, t, hq, d])?;
    let (xb, in_off) = x.bind(gpu, 0, x.numel())?;
    let (wb, v_off) = norm_w.bind(gpu, 0, cols)?;
    let (mb, in2_off) = qkv.bind(gpu, 0, qkv.numel())?;
    let (ob, out_off) = qo.bind(gpu, 0, qo.numel())?;
    let (kcb, out2_off) = k_cache.bind(gpu, 0, k_cache.numel())?;
    let (vcb, vc_off) = v_cache.bind(gpu, 0, v_cache.numel())?;
    let (pos0, each) = match each {
        Some(ps) => (EACH as usize, each_positions(ps, 0, b)),
        None => (at.end(t) - t, [0; EACH_PER_DISPATCH]),
    };
    let meta = Meta { heads2: hk as u32, cap: cap as u32, in_off, out_off, in2_off, out2_off, v_off, vc_off, cols: cols as u32, eps, each, ..meta("rope", t, hq, d, pos0, rot)? };
    let threads = [("RWG", gpu.row_threads() as f64)];
    gpu.dispatch(ROPE, OP, &threads, bytemuck::bytes_of(&meta), &[xb, ob, mb, kcb, wb, vcb], [pairs as u32, rows as u32, 1])?;
    Ok(qo)
}

/// What `check_stacked` finds: the sequences, their tokens, the caches' rows and, for
/// sequences at their own positions, those positions.
struct Stacked<'a> {
    b: usize,
    t: usize,
    cap: usize,
    each: Option<&'a [usize]>,
}

/// Checks a stacked q/k/v product of `rows` rows of `n` values against the heads, the caches
/// [B, Hkv, S, D] and the positions.
fn check_stacked<'a>(op: &'static str, rows: usize, n: usize, heads: Heads, k_cache: &Tensor, v_cache: &Tensor, at: At<'a>) -> Result<Stacked<'a>> {
    let Heads { q: hq, kv: hk, dim: d } = heads;
    let &[b, hc, cap, cd] = k_cache.shape() else {
        return Err(Error::shape(op, format!("k_cache {:?} is not [B, Hkv, S, D]", k_cache.shape())));
    };
    if n != (hq + 2 * hk) * d || (hc, cd) != (hk, d) || b == 0 || !rows.is_multiple_of(b) || v_cache.shape() != k_cache.shape() {
        return Err(Error::shape(op, format!("{rows} rows of {n} and caches {:?}, {:?} do not agree with {hq} + 2 × {hk} heads of {d}", k_cache.shape(), v_cache.shape())));
    }
    let t = rows / b;
    check(op, "q", &[b, t, hq, d], at.end(t).saturating_sub(t))?;
    let each = match at {
        At::Each(ps) if t != 1 || ps.len() != b => {
            return Err(Error::shape(op, format!("{} positions for {b} sequences of {t} tokens: sequences at their own positions take one token each", ps.len())));
        }
        At::Each(ps) => Some(ps),
        At::From(_) => None,
    };
    if at.end(t) > cap {
        return Err(Error::shape(op, format!("positions up to {} do not fit caches of {cap} rows", at.end(t))));
    }
    Ok(Stacked { b, t, cap, each })
}

#[allow(clippy::too_many_arguments)]
fn rope_kv_from(gpu: &Gpu, q: &Tensor, k: &Tensor, v: &Tensor, k_cache: &Tensor, v_cache: &Tensor, pos0: usize, rot: &Rope) -> Result<Tensor> {
    let (qs, ks) = (q.shape(), k.shape());
    let qo = gpu.empty(qs)?;
    let ins = KvIn { q: (q, 0), k: (k, 0), v: (v, 0), tstride: 0 };
    let dims = [qs[0], qs[1], qs[2], ks[2], qs[3]];
    if (qs[0], qs[1], qs[3]) != (ks[0], ks[1], ks[3]) || !rope_kv_dispatch(gpu, &ins, dims, [k_cache, v_cache], &qo, pos0, [0; EACH_PER_DISPATCH], rot)? {
        let (qo, ko) = rope_pair(gpu, q, k, pos0, rot)?;
        attention::write_kv_pair(gpu, &ko, v, k_cache, v_cache, pos0)?;
        return Ok(qo);
    }
    Ok(qo)
}

/// rope_kv's inputs, each a tensor and the element its part starts at: three dense tensors
/// [B, T, H, D] (tstride 0), or one stacked product [B·T, (Hq + 2·Hkv)·D] three times, its rows
/// tstride apart.
struct KvIn<'a> {
    q: (&'a Tensor, usize),
    k: (&'a Tensor, usize),
    v: (&'a Tensor, usize),
    tstride: usize,
}

/// The one dispatch of rope_kv over `ins` of [B, T, Hq | Hkv, D] (`dims`: B, T, Hq, Hkv, D) into
/// qo and the caches [B, Hkv, S, D], tokens from `pos0` (or each sequence at `each[b]` where
/// pos0 is EACH); false, with nothing done, where the tensors do not fit one binding each or
/// the work one dispatch.
#[allow(clippy::too_many_arguments)]
fn rope_kv_dispatch(gpu: &Gpu, ins: &KvIn, dims: [usize; 5], [k_cache, v_cache]: [&Tensor; 2], qo: &Tensor, pos0: usize, each: [u32; EACH_PER_DISPATCH], rot: &Rope) -> Result<bool> {
    let [b, t, hq, hk, d] = dims;
    let (nq, nk) = (b * t * hq * d, b * t * hk * d);
    let max_elems = Tensor::max_binding_elems(gpu);
    let threads = nq / 2 + nk;
    let fits = [ins.q.0, ins.k.0, ins.v.0, k_cache].iter().all(|t| t.numel() <= max_elems) && threads <= gpu.split_limits().max_workgroups as usize * WG;
    if !fits || nq == 0 || nk == 0 {
        return Ok(false);
    }
    fn whole<'t>(gpu: &Gpu, (t, start): (&'t Tensor, usize)) -> Result<(crate::gpu::Bind<'t>, u32)> {
        t.bind(gpu, 0, t.numel()).map(|(b, off)| (b, off + start as u32))
    }
    let ((qb, in_off), (kb, in2_off), (vb, v_off)) = (whole(gpu, ins.q)?, whole(gpu, ins.k)?, whole(gpu, ins.v)?);
    let (ob, out_off) = qo.bind(gpu, 0, qo.numel())?;
    let (kcb, out2_off) = k_cache.bind(gpu, 0, k_cache.numel())?;
    let (vcb, vc_off) = v_cache.bind(gpu, 0, v_cache.numel())?;
    let meta = Meta {
        pairs: (nq / 2) as u32,
        pairs2: (nk / 2) as u32,
        heads2: hk as u32,
        cap: k_cache.shape()[2] as u32,
        in_off,
        out_off,
        in2_off,
        out2_off,
        v_off,
        vc_off,
        tstride: ins.tstride as u32,
        each,
        ..meta("rope", t, hq, d, pos0, rot)?
    };
    gpu.dispatch(ROPE, "rope_kv", &[], bytemuck::bytes_of(&meta), &[qb, ob, kb, kcb, vb, vcb], [groups(threads, WG), 1, 1])?;
    Ok(true)
}

/// `rope_kv_at` reading the queries, keys and values straight from one stacked product qkv:
/// [B·T, (Hq + 2·Hkv)·D] (each row a token's queries, then keys, then values), the caches
/// [B, Hkv, S, D] giving B. One dispatch (per `EACH_PER_DISPATCH` sequences at their own
/// positions) where it fits; else the parts are copied out and go through `rope_kv_at`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_stacked(gpu: &Gpu, qkv: &Tensor, heads: Heads, k_cache: &Tensor, v_cache: &Tensor, at: At, rot: &Rope) -> Result<Tensor> {
    const OP: &str = "rope_kv_stacked";
    let &[rows, n] = qkv.shape() else {
        return Err(Error::shape(OP, format!("the stacked product {:?} is not 2-D", qkv.shape())));
    };
    let Stacked { b, t, cap, each } = check_stacked(OP, rows, n, heads, k_cache, v_cache, at)?;
    let Heads { q: hq, kv: hk, dim: d } = heads;
    let qo = gpu.empty(&[b, t, hq, d])?;
    if qo.numel() == 0 {
        return Ok(qo);
    }
    let (nq, nkv) = (hq * d, hk * d);
    for (b0, bn) in chunks(b, if each.is_some() { EACH_PER_DISPATCH } else { b }) {
        let part = qkv.view(b0 * t * n, &[bn * t, n])?;
        let cache_of = |c: &Tensor| c.view(b0 * hk * cap * d, &[bn, hk, cap, d]);
        let (kc, vc, q_out) = (cache_of(k_cache)?, cache_of(v_cache)?, qo.view(b0 * t * nq, &[bn, t, hq, d])?);
        let (pos0, each_part, at_part) = match each {
            Some(ps) => (EACH as usize, each_positions(ps, b0, bn), At::Each(&ps[b0..b0 + bn])),
            None => (at.end(t) - t, [0; EACH_PER_DISPATCH], at),
        };
        let ins = KvIn { q: (&part, 0), k: (&part, nq), v: (&part, nq + nkv), tstride: n };
        if !rope_kv_dispatch(gpu, &ins, [bn, t, hq, hk, d], [&kc, &vc], &q_out, pos0, each_part, rot)? {
            // Too large for one dispatch: the parts copied out, then the kernels that split.
            let dense = |from: usize, h: usize| -> Result<Tensor> {
                let shape = [bn, t, h, d];
                let out = gpu.empty(&shape)?;
                copy_strided(gpu, &part, View { offset: from, strides: [t * n, n, d, 1] }, &out, View::dense(&shape), &shape)?;
                Ok(out)
            };
            let q1 = rope_kv_at(gpu, &dense(0, hq)?, &dense(nq, hk)?, &dense(nq + nkv, hk)?, &kc, &vc, at_part, rot)?;
            gpu.copy_into(&q1, &q_out)?;
        }
    }
    Ok(qo)
}

/// The backward of the rotation `rope_kv_stacked` applies, into a stacked q/k/v gradient
/// dqkv: [B·T, (Hq + 2·Hkv)·D] (each row a token's, queries then keys then values): dq
/// [B, T, Hq, D] rotated back into the query columns, and the key columns — which
/// `attention::attention_bwd_into` wrote there — rotated back in place; the value columns are
/// left as they are. One product of dqkv with the stacked weights then gives the gradient at
/// the projections' input. One dispatch where both fit a binding and the pairs a dispatch;
/// else `rope_bwd` on dense copies.
pub fn rope_bwd_stacked(gpu: &Gpu, dq: &Tensor, dqkv: &Tensor, heads: Heads, pos0: usize, rot: &Rope) -> Result<()> {
    const OP: &str = "rope_bwd_stacked";
    let Heads { q: hq, kv: hk, dim: d } = heads;
    let [b, t, _, _] = check(OP, "dq", dq.shape(), pos0)?;
    let n = (hq + 2 * hk) * d;
    if dq.shape() != [b, t, hq, d] || dqkv.shape() != [b * t, n] {
        return Err(Error::shape(OP, format!("dq {:?} and the stacked gradient {:?} do not agree with {hq} + 2 × {hk} heads of {d}", dq.shape(), dqkv.shape())));
    }
    let (nq, nk) = (b * t * hq * d, b * t * hk * d);
    if nq == 0 {
        return Ok(());
    }
    let max_elems = Tensor::max_binding_elems(gpu);
    let fits = dq.numel() <= max_elems && dqkv.numel() <= max_elems && (nq + nk) / 2 <= gpu.split_limits().max_workgroups as usize * WG;
    if !fits {
        let part = |from: usize, h: usize| (View { offset: from, strides: [t * n, n, d, 1] }, [b, t, h, d]);
        let (q_view, q_shape) = part(0, hq);
        copy_strided(gpu, &rope_bwd(gpu, dq, pos0, rot)?, View::dense(&q_shape), dqkv, q_view, &q_shape)?;
        let (k_view, k_shape) = part(hq * d, hk);
        let dk = gpu.empty(&k_shape)?;
        copy_strided(gpu, dqkv, k_view, &dk, View::dense(&k_shape), &k_shape)?;
        return copy_strided(gpu, &rope_bwd(gpu, &dk, pos0, rot)?, View::dense(&k_shape), dqkv, k_view, &k_shape);
    }
    let (xb, in_off) = dq.bind(gpu, 0, dq.numel())?;
    let (ob, out_off) = dqkv.bind(gpu, 0, dqkv.numel())?;
    let meta = Meta {
        pairs: (nq / 2) as u32,
        pairs2: (nk / 2) as u32,
        heads2: hk as u32,
        in_off,
        out_off,
        in2_off: out_off + (hq * d) as u32,
        tstride: n as u32,
        ..meta("rope_bwd", t, hq, d, pos0, rot)?
    };
    gpu.dispatch(ROPE, OP, &[], bytemuck::bytes_of(&meta), &[xb, ob], [groups((nq + nk) / 2, WG), 1, 1])
}

/// x's [B, T, H, D], checked: an even head dimension the uniform can hold, positions an f32
/// holds exactly.
fn check(op: &'static str, name: &str, shape: &[usize], pos0: usize) -> Result<[usize; 4]> {
    let &[b, t, h, d] = shape else {
        return Err(Error::shape(op, format!("{name} {shape:?} is not [B, T, H, D]")));
    };
    if d % 2 != 0 || d > MAX_HEAD_DIM {
        return Err(Error::shape(op, format!("{name}: head dimension {d} must be even and at most {MAX_HEAD_DIM}")));
    }
    if shape.iter().product::<usize>() > 0 && pos0 + t > 1 << 24 {
        return Err(Error::shape(op, format!("position {} is past the 2^24 an f32 holds exactly", pos0 + t - 1)));
    }
    Ok([b, t, h, d])
}

/// The parameters of a rotation of T tokens of H heads of width D from position pos0 (pairs,
/// the row range and offsets are set per dispatch).
fn meta(op: &'static str, t: usize, h: usize, d: usize, pos0: usize, rot: &Rope) -> Result<Meta> {
    let half = d / 2;
    if rot.inv_freq.len() != half {
        return Err(Error::shape(op, format!("{} RoPE frequencies for heads of {d}", rot.inv_freq.len())));
    }
    let mut meta = Meta {
        pairs: 0,
        half: half as u32,
        heads: h as u32,
        seq: t as u32,
        row0: 0,
        pos0: pos0 as u32,
        in_off: 0,
        out_off: 0,
        adjacent: (rot.style == RopeStyle::Adjacent) as u32,
        inverse: (op == "rope_bwd") as u32,
        pairs2: 0,
        heads2: 0,
        cap: 0,
        in2_off: 0,
        out2_off: 0,
        v_off: 0,
        vc_off: 0,
        cols: 0,
        eps: 0.0,
        tstride: 0,
        each: [0; EACH_PER_DISPATCH],
        inv_freq: [0.0; MAX_HEAD_DIM / 2],
    };
    for (f, &exact) in meta.inv_freq[..half].iter_mut().zip(&rot.inv_freq) {
        *f = exact as f32;
    }
    Ok(meta)
}

fn rotate(gpu: &Gpu, op: &'static str, name: &str, x: &Tensor, pos0: usize, rot: &Rope) -> Result<Tensor> {
    let [_, t, h, d] = check(op, name, x.shape(), pos0)?;
    let out = gpu.empty(x.shape())?;
    if x.numel() == 0 {
        return Ok(out);
    }
    let half = d / 2;
    let mut meta = meta(op, t, h, d, pos0, rot)?;
    let rows = x.numel() / d;
    let max_elems = Tensor::max_binding_elems(gpu);
    if d > max_elems {
        return Err(Error::TooLarge { op, detail: format!("a head of {d} values is larger than one binding") });
    }
    let by_groups = gpu.split_limits().max_workgroups as usize * WG / half;
    let rows_per = (max_elems / d).min(by_groups).max(1);
    for (r0, r) in chunks(rows, rows_per) {
        let (xb, in_off) = x.bind(gpu, r0 * d, r * d)?;
        let (ob, out_off) = out.bind(gpu, r0 * d, r * d)?;
        let pairs = r * half;
        meta = Meta { pairs: pairs as u32, row0: r0 as u32, in_off, out_off, ..meta };
        gpu.dispatch(ROPE, "rope", &[], bytemuck::bytes_of(&meta), &[xb, ob], [groups(pairs, WG), 1, 1])?;
    }
    Ok(out)
}
