//! Row log-softmax and its backward (shaders/loss.wgsl): the pieces of cross-entropy and KL
//! gradients. Cross-entropy's dlogits is log_softmax_bwd(logp, −onehot); KL(p_orig ‖ p)'s is
//! log_softmax_bwd(logp, −p_orig). `weighted_nll` does both in one pass from the logits, with
//! each row's loss.

use super::chunks;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor, SOFTWARE_LOOP_LIMIT};
use crate::shaders::LOSS;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    a_off: u32,
    b_off: u32,
    out_off: u32,
    loss_off: u32,
    /// kl_from_reference's w.
    weight: f32,
    /// row_top_k's k.
    k: u32,
}

/// log softmax over the last dimension of a tensor of any rank (max-subtracted).
pub fn log_softmax_rows(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    run_rows(gpu, "log_softmax_rows", x, None)
}

/// dx of `log_softmax_rows` given its output logp and the upstream gradient dlogp:
/// dx = dlogp − softmax · rowsum(dlogp).
pub fn log_softmax_bwd(gpu: &Gpu, logp: &Tensor, dlogp: &Tensor) -> Result<Tensor> {
    if dlogp.shape() != logp.shape() {
        return Err(Error::shape("log_softmax_bwd", format!("dlogp {:?} does not match logp {:?}", dlogp.shape(), logp.shape())));
    }
    run_rows(gpu, "log_softmax_bwd", logp, Some(dlogp))
}

/// A tensor's row width and row count, for the ops that run one workgroup per row.
fn rows_of(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::shape(op, "a 0-D tensor has no rows"));
    };
    Ok((cols, x.numel().checked_div(cols).unwrap_or(0)))
}

/// Pieces (first row, rows) of `rows` rows of `cols` values, each fitting one dispatch (a
/// workgroup per row) and one binding.
fn row_pieces(gpu: &Gpu, op: &'static str, rows: usize, cols: usize) -> Result<Vec<(usize, usize)>> {
    let max_elems = Tensor::max_binding_elems(gpu);
    if cols > max_elems {
        return Err(Error::TooLarge { op, detail: format!("a row of {cols} values is larger than one binding ({max_elems} values)") });
    }
    let rows_per = (max_elems / cols.max(1)).min(gpu.split_limits().max_workgroups as usize).max(1);
    Ok(chunks(rows, rows_per).collect())
}

/// One workgroup per row, rows split into dispatches that fit the workgroup and binding
/// limits; `b`, when given, is bound like `a`.
fn run_rows(gpu: &Gpu, op: &'static str, a: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (cols, rows) = rows_of(op, a)?;
    let out = gpu.empty(a.shape())?;
    if rows == 0 {
        return Ok(out);
    }
    for (r0, r) in row_pieces(gpu, op, rows, cols)? {
        let (ab, a_off) = a.bind(gpu, r0 * cols, r * cols)?;
        let (ob, out_off) = out.bind(gpu, r0 * cols, r * cols)?;
        let mut meta = Meta { rows: r as u32, cols: cols as u32, a_off, b_off: 0, out_off, loss_off: 0, weight: 0.0, k: 0 };
        let binds = match b {
            Some(b) => {
                let (bb, b_off) = b.bind(gpu, r0 * cols, r * cols)?;
                meta.b_off = b_off;
                vec![ab, bb, ob]
            }
            None => vec![ab, ob],
        };
        gpu.dispatch(LOSS, op, &[], bytemuck::bytes_of(&meta), &binds, [r as u32, 1, 1])?;
    }
    Ok(out)
}

/// For logits x [rows, cols] and weights t ≥ 0 of the same shape, each row's loss
/// T·KL(t/T ‖ p) = Σ_{t_j>0} t_j (log(t_j/T) − log p_j) (p = softmax(x), T = Σ_j t_j) and its
/// gradient dx = p·T − t, in one pass: [rows, cols] and [rows]. A one-hot t of weight w gives w
/// times the cross-entropy; t = w p_ref gives w KL(p_ref ‖ p). Nothing of the size of the
/// logits is read back.
pub fn weighted_nll(gpu: &Gpu, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "weighted_nll";
    if t.shape() != x.shape() {
        return Err(Error::shape(OP, format!("weights {:?} do not match the logits {:?}", t.shape(), x.shape())));
    }
    gradient_and_row_loss(gpu, OP, x, t, 0.0)
}

/// The two losses' launch: one workgroup per row of the logits x and of b (same shape), a
/// gradient of x's shape and one loss a row, rows split into dispatches within the limits.
fn gradient_and_row_loss(gpu: &Gpu, op: &'static str, x: &Tensor, b: &Tensor, weight: f32) -> Result<(Tensor, Tensor)> {
    let (cols, rows) = rows_of(op, x)?;
    let grad = gpu.empty(x.shape())?;
    let loss = gpu.empty(&[rows])?;
    if rows == 0 {
        return Ok((grad, loss));
    }
    for (r0, r) in row_pieces(gpu, op, rows, cols)? {
        let (xb, a_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (bb, b_off) = b.bind(gpu, r0 * cols, r * cols)?;
        let (gb, out_off) = grad.bind(gpu, r0 * cols, r * cols)?;
        let (lb, loss_off) = loss.bind(gpu, r0, r)?;
        let meta = Meta { rows: r as u32, cols: cols as u32, a_off, b_off, out_off, loss_off, weight, k: 0 };
        gpu.dispatch(LOSS, op, &[], bytemuck::bytes_of(&meta), &[xb, bb, gb, lb], [r as u32, 1, 1])?;
    }
    Ok((grad, loss))
}

/// For logits x [rows, cols] and reference log-probabilities log q of the same shape, each
/// row's w·KL(p ‖ q) = w Σ_j p_j (log p_j − log q_j) (p = softmax(x)) and its gradient
/// w p (log p − log q − KL): [rows, cols] and [rows]. The direction of ROME's and MEMIT's
/// code (`weighted_nll` gives the other, KL(q ‖ p)).
pub fn kl_from_reference(gpu: &Gpu, x: &Tensor, log_q: &Tensor, weight: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "kl_from_reference";
    if log_q.shape() != x.shape() {
        return Err(Error::shape(OP, format!("reference {:?} does not match the logits {:?}", log_q.shape(), x.shape())));
    }
    if !weight.is_finite() {
        return Err(Error::Numeric(format!("{OP}: weight {weight}")));
    }
    gradient_and_row_loss(gpu, OP, x, log_q, weight)
}

/// The index of the largest value of each row of x [rows, cols] (the first where several are
/// equal, as torch.argmax), as f32: [rows]; NaN for a row holding a NaN or an infinity. What a
/// model predicts at each teacher-forced position, read back as one number a row.
pub fn row_argmax(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    if x.numel() == 0 {
        return gpu.empty(&[0]);
    }
    let top = row_top_k(gpu, x, 1)?;
    top.view(0, &[top.shape()[1]])
}

/// The k largest values of each row of x [rows, cols], largest first and the lower index first
/// among equal values: [2, rows, k], the indices (as f32) then the values, one tensor so that
/// one read brings both back; NaN throughout a row holding a NaN or an infinity. A sampler
/// reads these instead of a vocabulary a row. The kernel scans a row once per pick, so k is
/// meant to be small (a few dozen).
pub fn row_top_k(gpu: &Gpu, x: &Tensor, k: usize) -> Result<Tensor> {
    const OP: &str = "row_top_k";
    let (cols, rows) = rows_of(OP, x)?;
    if k == 0 || k > cols {
        return Err(Error::shape(OP, format!("the top {k} of rows of {cols} values")));
    }
    // Indices travel as f32, exact below 2^24.
    if cols > 1 << 24 {
        return Err(Error::TooLarge { op: OP, detail: format!("rows of {cols} values (indices must stay below 2^24)") });
    }
    if !row_top_k_fits(gpu, cols, k) {
        return Err(Error::TooLarge { op: OP, detail: format!("the top {k} of rows of {cols} values: {} iterations of one loop per thread, more than this adapter runs", k * cols.div_ceil(256)) });
    }
    let out = gpu.empty(&[2, rows, k])?;
    for (r0, r) in row_pieces(gpu, OP, rows, cols)? {
        let (xb, a_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (ib, out_off) = out.bind(gpu, r0 * k, r * k)?;
        let (vb, loss_off) = out.bind(gpu, (rows + r0) * k, r * k)?;
        let meta = Meta { rows: r as u32, cols: cols as u32, a_off, b_off: 0, out_off, loss_off, weight: 0.0, k: k as u32 };
        gpu.dispatch(LOSS, OP, &[], bytemuck::bytes_of(&meta), &[xb, ib, vb], [r as u32, 1, 1])?;
    }
    Ok(out)
}

/// One token drawn from each row's candidates as `row_top_k` found them ([2, rows, k]), as f32
/// indices: [rows]. `draws` holds (temperature, k, u) for every row from row `first` on
/// (`first · 3` values in): the softmax at the temperature of the row's first k candidates
/// (at most the k found), the first candidate whose running weight passes u · Σ weights (u in
/// [0, 1)); the largest where the temperature is not a positive finite number. NaN for a row
/// whose candidates are. In f32 on the GPU: where a draw falls within rounding of a boundary
/// between two candidates, an f64 draw can give the other, which is why a caller that needs
/// the host's choice checks it.
pub fn sample_top_k(gpu: &Gpu, candidates: &Tensor, draws: &Tensor, first: usize) -> Result<Tensor> {
    const OP: &str = "sample_top_k";
    let &[2, rows, k] = candidates.shape() else {
        return Err(Error::shape(OP, format!("candidates {:?} are not row_top_k's [2, rows, k]", candidates.shape())));
    };
    if k == 0 || first.checked_add(rows).and_then(|n| n.checked_mul(3)).is_none_or(|n| n > draws.numel()) {
        return Err(Error::shape(OP, format!("{rows} rows of {k} candidates with draws from row {first} of {:?}", draws.shape())));
    }
    let out = gpu.empty(&[rows])?;
    if rows == 0 {
        return Ok(out);
    }
    if rows.div_ceil(64) > gpu.split_limits().max_workgroups as usize {
        return Err(Error::TooLarge { op: OP, detail: format!("{rows} rows in one dispatch") });
    }
    // Both planes in one binding: the values start rows · k after the indices.
    let (cb, a_off) = candidates.bind(gpu, 0, 2 * rows * k)?;
    let (db, b_off) = draws.bind(gpu, first * 3, rows * 3)?;
    let (ob, out_off) = out.bind(gpu, 0, rows)?;
    let loss_off = a_off + (rows * k) as u32;
    let meta = Meta { rows: rows as u32, cols: k as u32, a_off, b_off, out_off, loss_off, weight: 0.0, k: k as u32 };
    gpu.dispatch(LOSS, OP, &[], bytemuck::bytes_of(&meta), &[cb, db, ob], [rows.div_ceil(64) as u32, 1, 1])?;
    Ok(out)
}

/// Whether `row_top_k` can take the top k of rows of `cols` values on this adapter. Each of a
/// workgroup's 256 threads runs its strided scan of the row once per pick, k · ⌈cols / 256⌉
/// iterations of one loop, within [`SOFTWARE_LOOP_LIMIT`] on a software adapter: a vocabulary
/// of 49,152 allows k up to 341 there. GPUs have no such limit.
pub fn row_top_k_fits(gpu: &Gpu, cols: usize, k: usize) -> bool {
    !gpu.is_cpu() || k.saturating_mul(cols.div_ceil(256)) <= SOFTWARE_LOOP_LIMIT
}

/// log softmax(x)[token_r] of each row r of logits x [rows, cols], without the log-softmax
/// itself: [rows]. Scoring reads these few numbers back instead of whole rows of a vocabulary.
pub fn token_logprobs(gpu: &Gpu, x: &Tensor, tokens: &[u32]) -> Result<Tensor> {
    const OP: &str = "token_logprob";
    let (cols, rows) = rows_of(OP, x)?;
    if tokens.len() != rows {
        return Err(Error::shape(OP, format!("{} tokens for {rows} rows", tokens.len())));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= cols) {
        return Err(Error::shape(OP, format!("token {t} is outside rows of {cols} values")));
    }
    // Token ids travel as f32, exact below 2^24.
    if cols > 1 << 24 {
        return Err(Error::TooLarge { op: OP, detail: format!("rows of {cols} values (token ids must stay below 2^24)") });
    }
    let out = gpu.empty(&[rows])?;
    if rows == 0 {
        return Ok(out);
    }
    let ids = gpu.upload(&tokens.iter().map(|&t| t as f32).collect::<Vec<_>>(), &[rows])?;
    for (r0, r) in row_pieces(gpu, OP, rows, cols)? {
        let (xb, a_off) = x.bind(gpu, r0 * cols, r * cols)?;
        let (ib, b_off) = ids.bind(gpu, r0, r)?;
        let (ob, out_off) = out.bind(gpu, r0, r)?;
        let meta = Meta { rows: r as u32, cols: cols as u32, a_off, b_off, out_off, loss_off: 0, weight: 0.0, k: 0 };
        gpu.dispatch(LOSS, OP, &[], bytemuck::bytes_of(&meta), &[xb, ib, ob], [r as u32, 1, 1])?;
    }
    Ok(out)
}
