//! The gradient of a loss with respect to one vector δ added to the residual stream after a
//! layer (ROME's and MEMIT's free variable), through every layer above it, on the GPU.
//!
//! The layers up to the edited one do not depend on δ, so their output is computed once
//! ([`DeltaPass::new`]); nor, attention being causal, do the upper layers at the positions
//! before a sequence's first δ: they run once too, leaving their keys and values in a cache.
//! Each evaluation runs only the upper layers from the first δ on, keeping their activations,
//! then walks back through them with the backward kernels. The loss of the few rows the terms
//! read and its gradient at their logits come from one kernel (`ops::loss::weighted_nll`); a
//! step uploads δ and reads back one number per term and δ's gradient, nothing batch-sized.

use super::config::Arch;
use super::batch::{span_groups, Batch};
use super::forward::{BlockTape, GpuModel, Keep, KvCache, MlpTape};
use super::names::Name;
use std::cell::RefCell;
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::{activation, attention, gather::gather_rows_from, loss::{kl_from_reference, weighted_nll}, norm, rope};

/// One term of the loss, on the logits of one row of the batch.
#[derive(Debug, Clone)]
pub enum Term {
    /// weight · −log p(token).
    Nll { row: usize, token: u32, weight: f64 },
    /// weight · KL(p_ref ‖ p) = weight · Σ p_ref (log p_ref − log p); `p_ref` sums to 1.
    Kl { row: usize, p_ref: Vec<f64>, weight: f64 },
    /// weight · KL(p ‖ q) = weight · Σ p (log p − log q), from the reference's log-probabilities
    /// (the direction of ROME's and MEMIT's code). These terms come last in a term list, all
    /// with one weight.
    KlFrom { row: usize, log_q: Vec<f64>, weight: f64 },
}

impl Term {
    fn row(&self) -> usize {
        match self {
            Term::Nll { row, .. } | Term::Kl { row, .. } | Term::KlFrom { row, .. } => *row,
        }
    }
}

/// The loss, its gradient with respect to δ, and the log-probabilities of every row a term
/// looked at (in the order of first appearance in the terms).
pub struct LossGrad {
    pub loss: f64,
    /// Each term's share of the loss, in the order given.
    pub terms: Vec<f64>,
    /// With several δ ([`DeltaPass::with_deltas`]), their gradients one after another (n·d).
    pub grad: Vec<f32>,
    /// The batch row each term read, in the order given.
    pub rows: Vec<usize>,
}

/// Loss terms checked against a pass and laid out on the GPU: each term's row and its weights
/// over the vocabulary (see `ops::loss::weighted_nll`).
pub struct PreparedTerms {
    weights: Tensor,
    /// The `KlFrom` terms: the first one's index, their weight and references [n, vocab].
    from_reference: Option<(usize, f32, Tensor)>,
    rows: Vec<usize>,
    /// Each term's row among the groups' rows stacked in group order (what the head gathers).
    stacked: Vec<u32>,
    /// Per group, [terms, group rows]: a one at each term's row there, scattering the terms'
    /// gradients back into the group with one product (None: no term reads the group).
    scatter: Vec<Option<Tensor>>,
}

/// One group of a pass's sequences, of similar lengths, run as a dense batch of its own.
///
/// Positions before `split` (the group's earliest δ) are the prefix, computed once; an
/// evaluation runs the suffix, positions `split..t` of every sequence, at the edited layer's
/// upper layers. "Rows" below are the suffix's, b·(t − split), unless named prefix rows.
struct Group {
    /// The whole sequences (rows of the pass are named in their positions).
    batch: Batch,
    split: usize,
    /// The residual stream after the edited layer at the suffix rows, before any δ: [rows, d].
    base: Tensor,
    /// [rows, n_deltas]: a one where a row receives a δ. Adding the δ is one product with it
    /// (base + S·δ, exact: each row sums one δ and zeros), and so is summing each δ's gradient
    /// over its sites (Sᵀ·dx): a step uploads n·d values and reads n·d back, not rows·d.
    sites: Tensor,
    /// The upper layers' keys and values: the prefix's, written once, and the suffix's, written
    /// again by every evaluation (always the same rows, so nothing of one evaluation is left for
    /// the next) and read by its backward pass.
    cache: RefCell<KvCache>,
    /// The last layer's output at the prefix rows, [b·split, d], for terms that read them
    /// (their loss does not depend on δ): None without a prefix.
    prefix_out: Option<Tensor>,
}

impl Group {
    fn suffix_len(&self) -> usize {
        self.batch.t - self.split
    }

    fn rows(&self) -> usize {
        self.batch.b() * self.suffix_len()
    }
}

/// Where a row of the pass sits: a suffix row or a prefix row of its group.
#[derive(Debug, Clone, Copy)]
enum Place {
    Suffix(usize),
    Prefix(usize),
}

/// A batch run up to `layer`, ready to evaluate losses of δ added at `sites` (rows of the batch).
///
/// Several independent δ can share one pass (MEMIT optimises the targets of a whole batch of
/// requests together): each site names the δ it receives, and δ is then the n·d values of all
/// of them one after another. Sequences do not see each other, so when each request's sites and
/// loss terms sit in its own sequences, the gradient of the summed loss with respect to δ_r is
/// the gradient of request r's own loss.
///
/// Rows are named as in the batch given (`batch().row(seq, pos)`), but the sequences run in
/// groups of similar spans ([`span_groups`]), each padded only to its own longest, so that
/// short prompts beside long ones cost their own length.
pub struct DeltaPass<'m> {
    model: &'m GpuModel,
    batch: Batch,
    layer: usize,
    n_deltas: usize,
    groups: Vec<Group>,
    /// For each sequence of the batch: its group and its index there.
    place: Vec<(usize, usize)>,
    /// Where each group's rows start among the groups' suffix rows stacked in order, then
    /// where its prefix rows start among the prefix rows stacked after all of those.
    first_row: Vec<usize>,
    first_prefix_row: Vec<usize>,
}

/// What one more group costs, in padded tokens' worth of work. A GPU pays each group's
/// dispatches (about 30 per layer and step, ~7 µs each on the H200 of 2026-12-04, where a
/// token of an edit batch's step cost ~0.2 ms) and runs small products below its width; a
/// software adapter pays per token and little per dispatch (`docs/results.md`).
pub fn group_overhead_tokens(gpu: &crate::gpu::Gpu) -> usize {
    if padded_targets() {
        usize::MAX
    } else if let Some(n) = overhead_override() {
        n
    } else if gpu.is_cpu() {
        16
    } else {
        128
    }
}

/// `REVIVE_PADDED_TARGETS=1`: the targets as before the groups (each pass one padded batch,
/// passes cut at 2,048 padded rows), so that one device call can measure both layouts.
pub fn padded_targets() -> bool {
    static PADDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PADDED.get_or_init(|| crate::gpu::env_flag("REVIVE_PADDED_TARGETS"))
}

/// `REVIVE_GROUP_OVERHEAD=N`: N tokens per group instead of the adapter's value, to measure
/// other values in one binary.
fn overhead_override() -> Option<usize> {
    static N: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::env::var("REVIVE_GROUP_OVERHEAD").ok().and_then(|v| v.trim().parse().ok()))
}

/// `REVIVE_NO_PREFIX=1`: every evaluation runs whole sequences through the upper layers, as
/// before the prefixes were computed once, so that one device call can measure both.
pub fn no_prefix() -> bool {
    static NO_PREFIX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_PREFIX.get_or_init(|| crate::gpu::env_flag("REVIVE_NO_PREFIX"))
}

impl<'m> DeltaPass<'m> {
    /// `sites`: (sequence, position) pairs that all receive the same δ.
    pub fn new(model: &'m GpuModel, batch: Batch, layer: usize, sites: &[(usize, usize)]) -> Result<Self> {
        let tagged: Vec<((usize, usize), usize)> = sites.iter().map(|&s| (s, 0)).collect();
        Self::with_deltas(model, batch, layer, &tagged, 1)
    }

    /// `sites`: ((sequence, position), δ index < n_deltas).
    pub fn with_deltas(model: &'m GpuModel, batch: Batch, layer: usize, sites: &[((usize, usize), usize)], n_deltas: usize) -> Result<Self> {
        Self::grouped(model, batch, layer, sites, n_deltas, group_overhead_tokens(model.gpu()))
    }

    /// [`Self::with_deltas`] with the sequences grouped at a given cost per group
    /// ([`span_groups`]): 0 runs each distinct span apart, `usize::MAX` the whole batch as one.
    pub fn grouped(model: &'m GpuModel, batch: Batch, layer: usize, sites: &[((usize, usize), usize)], n_deltas: usize, overhead_tokens: usize) -> Result<Self> {
        let c = &model.config;
        if layer >= c.n_layers {
            return Err(Error::shape("delta pass", format!("layer {layer} of a model with {} layers", c.n_layers)));
        }
        if n_deltas == 0 {
            return Err(Error::shape("delta pass", "no δ to optimise"));
        }
        let mut seen = std::collections::HashSet::new();
        for &((seq, pos), which) in sites {
            super::forward::check_site(c, &batch, &super::probe::Site { layer, seq, pos })?;
            if which >= n_deltas {
                return Err(Error::shape("delta pass", format!("a site receives δ {which} of {n_deltas}")));
            }
            if !seen.insert((seq, pos, which)) {
                return Err(Error::shape("delta pass", format!("site ({seq}, {pos}) is given δ {which} twice")));
            }
        }
        // Each sequence runs from its first δ on (from 0 without one, or without prefixes).
        let spans: Vec<(usize, usize)> = (0..batch.b())
            .map(|seq| {
                let first = sites.iter().filter(|((s, _), _)| *s == seq).map(|((_, pos), _)| *pos).min();
                (first.filter(|_| !no_prefix()).unwrap_or(0), batch.lens[seq])
            })
            .collect();
        let plan = span_groups(&spans, overhead_tokens);
        let mut place = vec![(0, 0); batch.b()];
        for (g, members) in plan.iter().enumerate() {
            for (k, &seq) in members.iter().enumerate() {
                place[seq] = (g, k);
            }
        }
        let mut groups = vec![];
        for (g, members) in plan.iter().enumerate() {
            let seqs: Vec<Vec<u32>> = members.iter().map(|&s| batch.ids[batch.row(s, 0)..batch.row(s, batch.lens[s])].to_vec()).collect();
            let group_sites: Vec<((usize, usize), usize)> = sites.iter().filter(|((seq, _), _)| place[*seq].0 == g).map(|&((seq, pos), which)| ((place[seq].1, pos), which)).collect();
            let split = members.iter().map(|&s| spans[s].0).min().unwrap_or(0);
            groups.push(Self::group(model, Batch::new(&seqs)?, layer, &group_sites, n_deltas, split)?);
        }
        let mut first_row = vec![];
        let mut first_prefix_row = vec![];
        let suffix_rows: usize = groups.iter().map(Group::rows).sum();
        let (mut rows, mut prefix_rows) = (0, suffix_rows);
        for group in &groups {
            first_row.push(rows);
            first_prefix_row.push(prefix_rows);
            rows += group.rows();
            prefix_rows += group.batch.b() * group.split;
        }
        Ok(DeltaPass { model, batch, layer, n_deltas, groups, place, first_row, first_prefix_row })
    }

    /// One group: its sequences up to the edited layer, then its prefix (the positions before
    /// `split`, at or before every δ of the group) through the upper layers, once. `sites` are
    /// ((sequence in the group, position), δ).
    fn group(model: &GpuModel, batch: Batch, layer: usize, sites: &[((usize, usize), usize)], n_deltas: usize, split: usize) -> Result<Group> {
        let gpu = model.gpu();
        let (b, t) = (batch.b(), batch.t);
        let ts = t - split;
        let mut onehot = vec![0.0f32; b * ts * n_deltas];
        for &((k, pos), which) in sites {
            onehot[(k * ts + pos - split) * n_deltas + which] = 1.0;
        }
        let sites = gpu.upload(&onehot, &[b * ts, n_deltas])?;
        let lower = model.residual_after(&batch, layer)?;
        let mut cache = model.new_cache(b, t)?;
        if split == 0 {
            return Ok(Group { batch, split, base: lower, sites, cache: RefCell::new(cache), prefix_out: None });
        }
        let rows = |from: usize, to: usize| -> Vec<u32> { (0..b).flat_map(|k| (from..to).map(move |pos| (k * t + pos) as u32)).collect() };
        let base = gather_rows_from(gpu, &[&lower], &rows(split, t))?;
        let mut x = gather_rows_from(gpu, &[&lower], &rows(0, split))?;
        for i in layer + 1..model.config.n_layers {
            x = model.block(i, x, &mut cache, 0, b, split, Keep::Output)?.x;
        }
        Ok(Group { batch, split, base, sites, cache: RefCell::new(cache), prefix_out: Some(x) })
    }

    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The groups' batches (shortest first): how the pass runs its sequences.
    pub fn group_batches(&self) -> Vec<&Batch> {
        self.groups.iter().map(|g| &g.batch).collect()
    }

    /// A row of the batch given → (its group, its place there). Padding rows are refused: they
    /// belong to no group.
    fn locate(&self, row: usize) -> Result<(usize, Place)> {
        let (seq, pos) = (row / self.batch.t.max(1), row % self.batch.t.max(1));
        if seq >= self.batch.b() {
            return Err(Error::shape("delta loss", format!("a term reads row {row} of a batch of {} rows", self.batch.ids.len())));
        }
        if pos >= self.batch.lens[seq] {
            return Err(Error::shape("delta loss", format!("row {row} is padding: position {pos} of sequence {seq}, which has {} tokens", self.batch.lens[seq])));
        }
        let (g, k) = self.place[seq];
        let group = &self.groups[g];
        Ok((g, if pos >= group.split { Place::Suffix(k * group.suffix_len() + pos - group.split) } else { Place::Prefix(k * group.split + pos) }))
    }

    /// `rows` of the batch as rows of the groups stacked in order.
    fn stacked_rows(&self, rows: &[usize]) -> Result<Vec<u32>> {
        rows.iter().map(|&r| self.locate(r).map(|at| self.stacked_row(at))).collect()
    }

    /// A (group, place there) as a row of the groups' suffix rows stacked in order, then
    /// their prefix rows.
    fn stacked_row(&self, (g, place): (usize, Place)) -> u32 {
        (match place {
            Place::Suffix(local) => self.first_row[g] + local,
            Place::Prefix(local) => self.first_prefix_row[g] + local,
        }) as u32
    }

    /// Log-probabilities of `rows` with δ added: no backward pass.
    pub fn logprobs(&self, delta: &[f32], rows: &[usize]) -> Result<Vec<Vec<f64>>> {
        // The same passes as `loss_and_grad` (taped, as its are), so that a KL against these
        // log-probabilities is 0 to the bit at this δ.
        let upper = self.upper(delta)?;
        let (logits, _) = self.head(&upper, &self.stacked_rows(rows)?)?;
        Ok(log_softmax(&self.model.host_logits(&logits)?, self.model.config.vocab_size))
    }

    /// The loss of δ and its gradient. The loss and its gradient at the logits are computed on
    /// the GPU (`weighted_nll`): only one number per term is read back, not the logits.
    pub fn loss_and_grad(&self, delta: &[f32], terms: &[Term]) -> Result<LossGrad> {
        self.loss_and_grad_with(delta, &self.prepare_terms(terms)?)
    }

    /// Checks the terms against this pass and puts their weights on the GPU, once for all the
    /// steps of an optimisation that evaluates the same terms ([`Self::loss_and_grad_with`]).
    pub fn prepare_terms(&self, terms: &[Term]) -> Result<PreparedTerms> {
        let vocab = self.model.config.vocab_size;
        if terms.is_empty() {
            return Err(Error::shape("delta loss", "no loss terms"));
        }
        // Each term's weights over its row: w at the token for an NLL term (w times the
        // cross-entropy), w·p_ref for a KL term (w KL(p_ref ‖ p)).
        let mut weights = vec![0.0f32; terms.len() * vocab];
        for (i, t) in terms.iter().enumerate() {
            let w = &mut weights[i * vocab..(i + 1) * vocab];
            match t {
                Term::Nll { token, weight, .. } => {
                    let tok = *token as usize;
                    if tok >= vocab {
                        return Err(Error::shape("delta loss", format!("target token {tok} is outside the vocabulary of {vocab}")));
                    }
                    w[tok] = *weight as f32;
                }
                Term::Kl { p_ref, weight, .. } => {
                    if p_ref.len() != vocab {
                        return Err(Error::shape("delta loss", format!("a KL reference has {} values, the vocabulary {vocab}", p_ref.len())));
                    }
                    for (w, &p) in w.iter_mut().zip(p_ref) {
                        *w = (weight * p.max(0.0)) as f32;
                    }
                }
                // No weights: `weighted_nll` gives these rows nothing; `kl_from_reference` does.
                Term::KlFrom { log_q, .. } => {
                    if log_q.len() != vocab {
                        return Err(Error::shape("delta loss", format!("a KL reference has {} values, the vocabulary {vocab}", log_q.len())));
                    }
                }
            }
        }
        let first = terms.iter().position(|t| matches!(t, Term::KlFrom { .. }));
        let from_reference = match first {
            None => None,
            Some(first) => {
                let mut log_q = vec![];
                let mut common = None;
                for t in &terms[first..] {
                    let Term::KlFrom { log_q: q, weight, .. } = t else {
                        return Err(Error::shape("delta loss", "KL-from-reference terms must come after every other term"));
                    };
                    if *common.get_or_insert(*weight) != *weight {
                        return Err(Error::shape("delta loss", format!("KL-from-reference terms of different weights ({} and {weight})", common.expect("set"))));
                    }
                    log_q.extend(q.iter().map(|&v| v as f32));
                }
                let n = terms.len() - first;
                Some((first, common.expect("at least the first") as f32, self.model.gpu().upload(&log_q, &[n, vocab])?))
            }
        };
        // One row of logits per term (a row two terms read is gathered twice), so that each
        // term's loss is its own row's.
        let rows: Vec<usize> = terms.iter().map(Term::row).collect();
        let located = rows.iter().map(|&r| self.locate(r)).collect::<Result<Vec<_>>>()?;
        let gpu = self.model.gpu();
        let mut scatter = vec![];
        for (g, group) in self.groups.iter().enumerate() {
            let n = group.rows();
            let mut onehot = vec![0.0f32; rows.len() * n];
            let mut any = false;
            // A prefix row does not depend on δ: its term adds nothing to the gradient.
            for (i, local) in located.iter().enumerate().filter_map(|(i, (gr, place))| match place {
                Place::Suffix(local) if *gr == g => Some((i, *local)),
                _ => None,
            }) {
                onehot[i * n + local] = 1.0;
                any = true;
            }
            scatter.push(if any { Some(gpu.upload(&onehot, &[rows.len(), n])?) } else { None });
        }
        let stacked = located.iter().map(|&at| self.stacked_row(at)).collect();
        Ok(PreparedTerms { weights: gpu.upload(&weights, &[terms.len(), vocab])?, from_reference, stacked, scatter, rows })
    }

    /// The loss of δ and its gradient for terms prepared by [`Self::prepare_terms`].
    pub fn loss_and_grad_with(&self, delta: &[f32], prepared: &PreparedTerms) -> Result<LossGrad> {
        let m = self.model;
        let gpu = m.gpu();
        if prepared.scatter.len() != self.groups.len() {
            return Err(Error::shape("delta loss", format!("terms prepared for {} groups, the pass has {}", prepared.scatter.len(), self.groups.len())));
        }
        let upper = self.upper(delta)?;
        let (logits, normed_in) = self.head(&upper, &prepared.stacked)?;
        let (dlogits, row_loss) = weighted_nll(gpu, &logits, &prepared.weights)?;
        // Every loss is read back after the backward pass is recorded: a read waits for the
        // GPU, which would otherwise sit idle while the host records the rest of the step.

        // Back through the unembedding and the final norm, then scatter the rows into each
        // group with a one-hot product (rows are few; no scatter kernel needed), down its
        // layers, and each δ's gradient summed over its sites in every group.
        let dh = gemm(gpu, &dlogits, m.head()?, None, Gemm::default())?;
        let mut from_reference_loss = None;
        if let Some((first, weight, log_q)) = &prepared.from_reference {
            // Those rows' weights were zero above: their part and their rows of dh are added.
            let (vocab, d) = (log_q.shape()[1], dh.shape()[1]);
            let n = log_q.shape()[0];
            let (dl, loss) = kl_from_reference(gpu, &logits.view(first * vocab, &[n, vocab])?, log_q, *weight)?;
            gemm(gpu, &dl, m.head()?, Some(&dh.view(first * d, &[n, d])?), Gemm { beta: 1.0, ..Default::default() })?;
            from_reference_loss = Some((*first, loss));
        }
        let dxr = self.norm_bwd(&normed_in, "final_norm", &dh, None)?;
        let mut grad: Option<Tensor> = None;
        for ((group, (_, tapes)), scatter) in self.groups.iter().zip(&upper).zip(&prepared.scatter) {
            let Some(scatter) = scatter else { continue };
            let cache = group.cache.borrow();
            let mut dx = gemm(gpu, scatter, &dxr, None, Gemm { trans_a: true, ..Default::default() })?;
            for (i, tape) in tapes.iter().enumerate().rev() {
                dx = self.block_bwd(self.layer + 1 + i, group, tape, &cache, dx)?;
            }
            let sum_sites = Gemm { trans_a: true, beta: if grad.is_some() { 1.0 } else { 0.0 }, ..Default::default() };
            grad = Some(gemm(gpu, &group.sites, &dx, grad.as_ref(), sum_sites)?);
        }
        let mut parts: Vec<f64> = gpu.download(&row_loss)?.into_iter().map(f64::from).collect();
        if let Some((first, loss)) = from_reference_loss {
            for (part, l) in parts[first..].iter_mut().zip(gpu.download(&loss)?) {
                *part += f64::from(l);
            }
        }
        // No term reads a row after a δ: the loss does not depend on δ.
        let grad = match grad {
            Some(grad) => gpu.download(&grad)?,
            None => vec![0.0; self.n_deltas * m.config.hidden],
        };
        Ok(LossGrad { loss: parts.iter().sum(), terms: parts, grad, rows: prepared.rows.clone() })
    }

    /// Runs the layers above the edited one on base + δ at the sites, group by group, over
    /// each group's suffix (its cache holds the prefix): each group's output and tapes. Always
    /// taped, even where no backward follows (`logprobs`): the taped products are the ones the
    /// loss reads.
    fn upper(&self, delta: &[f32]) -> Result<Vec<(Tensor, Vec<BlockTape>)>> {
        let m = self.model;
        let gpu = m.gpu();
        let (d, n_deltas) = (m.config.hidden, self.n_deltas);
        if delta.len() != d * n_deltas {
            return Err(Error::shape("delta pass", format!("δ has {} values, {n_deltas} residual vectors of {d} need {}", delta.len(), d * n_deltas)));
        }
        if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("δ[{i}] is {}", delta[i])));
        }
        let delta = gpu.upload(delta, &[n_deltas, d])?;
        let mut out = vec![];
        for group in &self.groups {
            // x = base + S·δ, accumulated into a copy: `gemm` writes into its C, and the base
            // serves every step.
            let mut x = gpu.empty(group.base.shape())?;
            gpu.copy_into(&group.base, &x)?;
            gemm(gpu, &group.sites, &delta, Some(&x), Gemm { beta: 1.0, ..Default::default() })?;
            let (b, ts) = (group.batch.b(), group.suffix_len());
            let mut cache = group.cache.borrow_mut();
            let mut tapes = vec![];
            for i in self.layer + 1..m.config.n_layers {
                let out = m.block(i, x, &mut cache, group.split, b, ts, Keep::Tape)?;
                x = out.x;
                tapes.extend(out.tape);
            }
            out.push((x, tapes));
        }
        Ok(out)
    }

    /// Logits of the rows `stacked` (among the groups' suffix rows in order, then their prefix
    /// rows) and the final norm's input rows.
    fn head(&self, upper: &[(Tensor, Vec<BlockTape>)], stacked: &[u32]) -> Result<(Tensor, Tensor)> {
        let m = self.model;
        let xs: Vec<&Tensor> = upper.iter().map(|(x, _)| x).chain(self.groups.iter().filter_map(|g| g.prefix_out.as_ref())).collect();
        let xr = gather_rows_from(m.gpu(), &xs, stacked)?;
        let h = m.norm(&xr, "final_norm")?;
        Ok((m.linear(&h, m.head()?, None)?, xr))
    }

    /// The dx of norm `prefix` for dy; with `acc`, added into it in the same dispatch (a
    /// residual path's gradient plus its branch's).
    fn norm_bwd(&self, x: &Tensor, prefix: &str, dy: &Tensor, acc: Option<&Tensor>) -> Result<Tensor> {
        let m = self.model;
        let kind = match m.config.arch {
            Arch::Llama => norm::NormKind::Rms,
            Arch::Gpt2 => norm::NormKind::Layer,
        };
        norm::norm_bwd(m.gpu(), kind, x, m.norm_weight(prefix)?, dy, m.config.norm_eps, acc)
    }

    /// d(block output) → d(block input) for block `i` at a group's suffix rows: the residual
    /// paths plus the MLP and attention branches, each through its backward kernels. The
    /// prefix's keys and values are constants: only the suffix's get a gradient. The branches'
    /// gradients are added into dy (taken: the residual path carries it through), which is
    /// returned.
    fn block_bwd(&self, i: usize, group: &Group, tape: &BlockTape, cache: &KvCache, dy: Tensor) -> Result<Tensor> {
        let m = self.model;
        let c = &m.config;
        let gpu = m.gpu();
        let (b, t, pos0, hd) = (group.batch.b(), group.suffix_len(), group.split, c.head_dim);
        let w = |name: &str| m.l(i, name);
        let plain = Gemm::default();
        let acc = Gemm { beta: 1.0, ..Default::default() };

        // MLP: x_out = x_mid + down(act(norm(x_mid))).
        let dkey = gemm(gpu, &dy, w("w_down")?, None, plain)?;
        let dh = match &tape.mlp {
            MlpTape::Stacked(gate_up) => {
                let (_, stacked) = m.stacked(i).ok_or_else(|| Error::shape("delta pass", format!("layer {i}: a stacked tape without stacked weights")))?;
                gemm(gpu, &activation::silu_mul_bwd_halves(gpu, gate_up, &dkey)?, stacked, None, plain)?
            }
            MlpTape::Apart { gate, up } => {
                let (dgate, dup) = activation::silu_mul_bwd(gpu, gate, up, &dkey)?;
                let dh = gemm(gpu, &dgate, w("w_gate")?, None, plain)?;
                gemm(gpu, &dup, w("w_up")?, Some(&dh), acc)?
            }
            MlpTape::Gelu(up) => gemm(gpu, &activation::gelu_bwd(gpu, up, &dkey)?, w("w_up")?, None, plain)?,
        };
        self.norm_bwd(&tape.x_mid, &Name::new(format_args!("layers.{i}.mlp_norm")), &dh, Some(&dy))?;
        let dx_mid = dy;

        // Attention: x_mid = x_in + wo(attn(rope(q), rope(k), v)).
        let d_o = gemm(gpu, &dx_mid, w("wo")?, None, plain)?.reshape(&[b, t, c.n_heads, hd])?;
        // The prefix's cached keys and values are constants: the gradients of the suffix's own.
        let kernel = attention::kernel_for(gpu, &tape.q);
        let scale = 1.0 / (hd as f32).sqrt();
        let (rows, (hq, hkv)) = (b * t, (c.n_heads, c.n_kv_heads));
        let dh = match m.stacked(i) {
            // (Llama's only.) Attention's backward writes dk and dv into their columns of one
            // stacked gradient, the rotation's backward fills the queries' and turns the keys'
            // back in place, and one product with the stacked weights follows.
            Some((qkv, _)) => {
                let dqkv = gpu.empty(&[rows, (hq + 2 * hkv) * hd])?;
                let dq = gpu.empty(tape.q.shape())?;
                let out = attention::KvGrads { k: (&dqkv, hq * hd), v: (&dqkv, (hq + hkv) * hd), tstride: (hq + 2 * hkv) * hd };
                attention::attention_bwd_into(gpu, &tape.q, &cache.k[i], &cache.v[i], pos0, pos0, scale, &d_o, kernel, &dq, out)?;
                rope::rope_bwd_stacked(gpu, &dq, &dqkv, rope::Heads { q: hq, kv: hkv, dim: hd }, pos0, m.rope())?;
                gemm(gpu, &dqkv, qkv, None, plain)?
            }
            None => {
                let (dq, dk, dv) = attention::attention_bwd_with(gpu, &tape.q, &cache.k[i], &cache.v[i], pos0, pos0, scale, &d_o, kernel)?;
                let (dq, dk) = match c.arch {
                    Arch::Gpt2 => (dq, dk),
                    Arch::Llama => (rope::rope_bwd(gpu, &dq, pos0, m.rope())?, rope::rope_bwd(gpu, &dk, pos0, m.rope())?),
                };
                let dh = gemm(gpu, &dq.reshape(&[rows, hq * hd])?, w("wq")?, None, plain)?;
                gemm(gpu, &dk.reshape(&[rows, hkv * hd])?, w("wk")?, Some(&dh), acc)?;
                gemm(gpu, &dv.reshape(&[rows, hkv * hd])?, w("wv")?, Some(&dh), acc)?;
                dh
            }
        };
        self.norm_bwd(&tape.x_in, &Name::new(format_args!("layers.{i}.attn_norm")), &dh, Some(&dx_mid))?;
        Ok(dx_mid)
    }
}

/// Row-wise log-softmax in f64 of [rows, vocab] logits.
pub fn log_softmax(logits: &[f32], vocab: usize) -> Vec<Vec<f64>> {
    logits.chunks(vocab).map(super::generate::log_softmax).collect()
}
