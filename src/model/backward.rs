//! The gradient of a loss with respect to one vector δ added to the residual stream after a
//! layer (ROME's and MEMIT's free variable), through every layer above it, on the GPU.
//!
//! The layers up to the edited one do not depend on δ, so their output is computed once
//! ([`DeltaPass::new`]); each evaluation runs only the upper layers, keeping their activations,
//! then walks back through them with the backward kernels. The loss of the few rows the terms
//! read and its gradient at their logits come from one kernel (`ops::loss::weighted_nll`); a
//! step uploads δ and reads back one number per term and δ's gradient, nothing batch-sized.

use super::config::Arch;
use super::forward::{Batch, BlockTape, GpuModel, Keep, KvCache};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::{activation, attention, elementwise, gather::gather_rows, loss::weighted_nll, norm, rope};

/// One term of the loss, on the logits of one row of the batch.
#[derive(Debug, Clone)]
pub enum Term {
    /// weight · −log p(token).
    Nll { row: usize, token: u32, weight: f64 },
    /// weight · KL(p_ref ‖ p) = weight · Σ p_ref (log p_ref − log p); `p_ref` sums to 1.
    Kl { row: usize, p_ref: Vec<f64>, weight: f64 },
}

impl Term {
    fn row(&self) -> usize {
        match self {
            Term::Nll { row, .. } | Term::Kl { row, .. } => *row,
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
    rows: Vec<usize>,
    /// [terms, B·T]: a one at each term's row, scattering the terms' gradients back into the
    /// batch with one product.
    scatter: Tensor,
}

/// A batch run up to `layer`, ready to evaluate losses of δ added at `sites` (rows of the batch).
///
/// Several independent δ can share one pass (MEMIT optimises the targets of a whole batch of
/// requests together): each site names the δ it receives, and δ is then the n·d values of all
/// of them one after another. Sequences do not see each other, so when each request's sites and
/// loss terms sit in its own sequences, the gradient of the summed loss with respect to δ_r is
/// the gradient of request r's own loss.
pub struct DeltaPass<'m> {
    model: &'m GpuModel,
    batch: Batch,
    layer: usize,
    base: Tensor,
    /// [B·T, n_deltas]: a one where a row receives a δ. Adding the δ is one product with it
    /// (base + S·δ, exact: each row sums one δ and zeros), and so is summing each δ's gradient
    /// over its sites (Sᵀ·dx): a step uploads n·d values and reads n·d back, not B·T·d.
    sites: Tensor,
}

impl<'m> DeltaPass<'m> {
    /// `sites`: (sequence, position) pairs that all receive the same δ.
    pub fn new(model: &'m GpuModel, batch: Batch, layer: usize, sites: &[(usize, usize)]) -> Result<Self> {
        let tagged: Vec<((usize, usize), usize)> = sites.iter().map(|&s| (s, 0)).collect();
        Self::with_deltas(model, batch, layer, &tagged, 1)
    }

    /// `sites`: ((sequence, position), δ index < n_deltas).
    pub fn with_deltas(model: &'m GpuModel, batch: Batch, layer: usize, sites: &[((usize, usize), usize)], n_deltas: usize) -> Result<Self> {
        let c = &model.config;
        if layer >= c.n_layers {
            return Err(Error::shape("delta pass", format!("layer {layer} of a model with {} layers", c.n_layers)));
        }
        if n_deltas == 0 {
            return Err(Error::shape("delta pass", "no δ to optimise"));
        }
        let mut onehot = vec![0.0f32; batch.ids.len() * n_deltas];
        for &((seq, pos), which) in sites {
            super::forward::check_site(c, &batch, &super::probe::Site { layer, seq, pos })?;
            if which >= n_deltas {
                return Err(Error::shape("delta pass", format!("a site receives δ {which} of {n_deltas}")));
            }
            let cell = &mut onehot[batch.row(seq, pos) * n_deltas + which];
            if *cell != 0.0 {
                return Err(Error::shape("delta pass", format!("site ({seq}, {pos}) is given δ {which} twice")));
            }
            *cell = 1.0;
        }
        let sites = model.gpu().upload(&onehot, &[batch.ids.len(), n_deltas])?;
        let base = model.residual_after(&batch, layer)?;
        Ok(DeltaPass { model, batch, layer, base, sites })
    }

    /// The residual stream after the edited layer, before any δ: [B·T, d].
    pub fn base(&self) -> &Tensor {
        &self.base
    }

    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Log-probabilities of `rows` with δ added: no backward pass.
    pub fn logprobs(&self, delta: &[f32], rows: &[usize]) -> Result<Vec<Vec<f64>>> {
        // The same products as `loss_and_grad` (the taped ones, not the stacked), so that a KL
        // against these log-probabilities is 0 to the bit at this δ.
        let (x, _, _) = self.upper(delta, true)?;
        let (logits, _) = self.head(&x, rows)?;
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
        let (vocab, n) = (self.model.config.vocab_size, self.batch.ids.len());
        if terms.is_empty() {
            return Err(Error::shape("delta loss", "no loss terms"));
        }
        // Each term's weights over its row: w at the token for an NLL term (w times the
        // cross-entropy), w·p_ref for a KL term (w KL(p_ref ‖ p)).
        let mut weights = vec![0.0f32; terms.len() * vocab];
        for (i, t) in terms.iter().enumerate() {
            if t.row() >= n {
                return Err(Error::shape("delta loss", format!("a term reads row {} of a batch of {n} rows", t.row())));
            }
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
            }
        }
        // One row of logits per term (a row two terms read is gathered twice), so that each
        // term's loss is its own row's.
        let rows: Vec<usize> = terms.iter().map(Term::row).collect();
        let mut scatter = vec![0.0f32; rows.len() * n];
        for (i, &r) in rows.iter().enumerate() {
            scatter[i * n + r] = 1.0;
        }
        let gpu = self.model.gpu();
        Ok(PreparedTerms { weights: gpu.upload(&weights, &[terms.len(), vocab])?, scatter: gpu.upload(&scatter, &[rows.len(), n])?, rows })
    }

    /// The loss of δ and its gradient for terms prepared by [`Self::prepare_terms`].
    pub fn loss_and_grad_with(&self, delta: &[f32], prepared: &PreparedTerms) -> Result<LossGrad> {
        let m = self.model;
        let gpu = m.gpu();
        let rows = prepared.rows.clone();
        let (x, tapes, cache) = self.upper(delta, true)?;
        let (logits, normed_in) = self.head(&x, &rows)?;
        let (dlogits, row_loss) = weighted_nll(gpu, &logits, &prepared.weights)?;
        let parts: Vec<f64> = gpu.download(&row_loss)?.into_iter().map(f64::from).collect();

        // Back through the unembedding and the final norm, then scatter the rows into the
        // whole batch with a one-hot product (rows are few; no scatter kernel needed).
        let dh = gemm(gpu, &dlogits, m.head()?, None, Gemm::default())?;
        let dxr = self.norm_bwd(&normed_in, "final_norm", &dh)?;
        let mut dx = gemm(gpu, &prepared.scatter, &dxr, None, Gemm { trans_a: true, ..Default::default() })?;
        for (i, tape) in tapes.iter().enumerate().rev() {
            dx = self.block_bwd(self.layer + 1 + i, tape, &cache, &dx)?;
        }
        let grad = gpu.download(&gemm(gpu, &self.sites, &dx, None, Gemm { trans_a: true, ..Default::default() })?)?;
        Ok(LossGrad { loss: parts.iter().sum(), terms: parts, grad, rows })
    }

    /// Runs the layers above the edited one on base + δ at the sites.
    fn upper(&self, delta: &[f32], record: bool) -> Result<(Tensor, Vec<BlockTape>, KvCache)> {
        let m = self.model;
        let gpu = m.gpu();
        let (d, n_deltas) = (m.config.hidden, self.sites.shape()[1]);
        if delta.len() != d * n_deltas {
            return Err(Error::shape("delta pass", format!("δ has {} values, {n_deltas} residual vectors of {d} need {}", delta.len(), d * n_deltas)));
        }
        if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("δ[{i}] is {}", delta[i])));
        }
        // x = base + S·δ, accumulated into a copy: `gemm` writes into its C, and the base
        // serves every step.
        let mut x = gpu.empty(self.base.shape())?;
        gpu.copy_into(&self.base, &x)?;
        gemm(gpu, &self.sites, &gpu.upload(delta, &[n_deltas, d])?, Some(&x), Gemm { beta: 1.0, ..Default::default() })?;
        let mut cache = m.new_cache(self.batch.b(), self.batch.t)?;
        let mut tapes = vec![];
        for i in self.layer + 1..m.config.n_layers {
            let keep = if record { Keep::Tape } else { Keep::Output };
            let out = m.block(i, x, &mut cache, 0, self.batch.b(), self.batch.t, keep)?;
            x = out.x;
            tapes.extend(out.tape);
        }
        Ok((x, tapes, cache))
    }

    /// Logits of `rows` and the final norm's input rows.
    fn head(&self, x: &Tensor, rows: &[usize]) -> Result<(Tensor, Tensor)> {
        let m = self.model;
        let xr = gather_rows(m.gpu(), x, &rows.iter().map(|&r| r as u32).collect::<Vec<_>>())?;
        let h = m.norm(&xr, "final_norm")?;
        Ok((m.linear(&h, m.head()?, None)?, xr))
    }

    fn norm_bwd(&self, x: &Tensor, prefix: &str, dy: &Tensor) -> Result<Tensor> {
        let m = self.model;
        let w = m.tensor(&format!("{prefix}.weight"))?;
        let eps = m.config.norm_eps;
        match m.config.arch {
            Arch::Llama => norm::rms_norm_bwd(m.gpu(), x, w, dy, eps),
            Arch::Gpt2 => norm::layer_norm_bwd(m.gpu(), x, w, dy, eps),
        }
    }

    /// d(block output) → d(block input) for block `i`: the residual paths plus the MLP and
    /// attention branches, each through its backward kernels.
    fn block_bwd(&self, i: usize, tape: &BlockTape, cache: &KvCache, dy: &Tensor) -> Result<Tensor> {
        let m = self.model;
        let c = &m.config;
        let gpu = m.gpu();
        let (b, t, hd) = (self.batch.b(), self.batch.t, c.head_dim);
        let w = |name: &str| m.l(i, name);
        let plain = Gemm::default();
        let acc = Gemm { beta: 1.0, ..Default::default() };

        // MLP: x_out = x_mid + down(act(norm(x_mid))).
        let dkey = gemm(gpu, dy, w("w_down")?, None, plain)?;
        let dh = match &tape.gate {
            Some(gate) => {
                let (dgate, dup) = activation::silu_mul_bwd(gpu, gate, &tape.up, &dkey)?;
                let dh = gemm(gpu, &dgate, w("w_gate")?, None, plain)?;
                gemm(gpu, &dup, w("w_up")?, Some(&dh), acc)?
            }
            None => gemm(gpu, &activation::gelu_bwd(gpu, &tape.up, &dkey)?, w("w_up")?, None, plain)?,
        };
        let dx_mid = elementwise::add(gpu, dy, &self.norm_bwd(&tape.x_mid, &format!("layers.{i}.mlp_norm"), &dh)?)?;

        // Attention: x_mid = x_in + wo(attn(rope(q), rope(k), v)).
        let d_o = gemm(gpu, &dx_mid, w("wo")?, None, plain)?.reshape(&[b, t, c.n_heads, hd])?;
        let (dq, dk, dv) = attention::attention_bwd(gpu, &tape.q, &cache.k[i], &cache.v[i], 0, 1.0 / (hd as f32).sqrt(), &d_o)?;
        let (dq, dk) = match c.arch {
            Arch::Gpt2 => (dq, dk),
            Arch::Llama => (rope::rope_bwd(gpu, &dq, 0, c.rope_theta, c.rope_style)?, rope::rope_bwd(gpu, &dk, 0, c.rope_theta, c.rope_style)?),
        };
        let rows = b * t;
        let dh = gemm(gpu, &dq.reshape(&[rows, c.n_heads * hd])?, w("wq")?, None, plain)?;
        gemm(gpu, &dk.reshape(&[rows, c.n_kv_heads * hd])?, w("wk")?, Some(&dh), acc)?;
        gemm(gpu, &dv.reshape(&[rows, c.n_kv_heads * hd])?, w("wv")?, Some(&dh), acc)?;
        elementwise::add(gpu, &dx_mid, &self.norm_bwd(&tape.x_in, &format!("layers.{i}.attn_norm"), &dh)?)
    }
}

/// Row-wise log-softmax in f64 of [rows, vocab] logits.
pub fn log_softmax(logits: &[f32], vocab: usize) -> Vec<Vec<f64>> {
    logits.chunks(vocab).map(super::generate::log_softmax).collect()
}
