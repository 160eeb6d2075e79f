//! C0 = E[k kᵀ]: the second moment of one layer's MLP keys (the down-projection input) over a
//! natural-text corpus, accumulated on the GPU. ROME and MEMIT whiten their updates with it;
//! AlphaEdit projects onto its small-eigenvalue subspace.

use super::corpus;
use super::cov_cache::{self, Outcome};
use super::moment::SecondMoment;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::batch::Batch;
use crate::model::forward::GpuModel;
use crate::model::Tok;
use crate::ops::gather::gather_rows;
use crate::ops::matmul::{gemm, Gemm};
use std::path::Path;

/// How the sum is batched.
#[derive(Debug, Clone, Copy)]
pub struct Accumulate {
    /// Tokens per forward pass (whole sequences, at least one).
    pub batch_tokens: usize,
    /// Batches summed in f32 on the GPU before the partial sum is folded into f64 on the host.
    pub fold_every: usize,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
}

impl Default for Accumulate {
    fn default() -> Self {
        Accumulate { batch_tokens: 1024, fold_every: 8, progress: false }
    }
}

/// Σ k kᵀ in two levels. Each batch adds Kᵀ·K into an f32 tensor on the GPU (one gemm with
/// beta = 1, no download); every `fold_every` batches that partial sum is downloaded, added
/// into an f64 host sum and restarted from zero. Why: in one f32 running sum over 100k tokens
/// each new batch is rounded against a total up to ~100 times larger, and the error grows with
/// the number of additions (~n·2⁻²⁴ relative in the worst case); folding keeps every f32 sum to
/// a few thousand tokens, while downloading 1536² floats every few batches costs little next to
/// the forward passes.
pub struct Accumulator {
    gpu: Gpu,
    dim: usize,
    part: Tensor,
    part_batches: usize,
    sum: Vec<f64>,
    tokens: usize,
    fold_every: usize,
}

impl Accumulator {
    pub fn new(gpu: &Gpu, dim: usize, fold_every: usize) -> Result<Accumulator> {
        Ok(Accumulator {
            gpu: gpu.clone(),
            dim,
            part: gpu.full(&[dim, dim], 0.0)?,
            part_batches: 0,
            sum: vec![0.0; dim * dim],
            tokens: 0,
            fold_every: fold_every.max(1),
        })
    }

    /// Adds the keys [n, dim] (every row a real token).
    pub fn add(&mut self, keys: &Tensor) -> Result<()> {
        let shape = keys.shape();
        if shape.len() != 2 || shape[1] != self.dim {
            return Err(Error::shape("covariance", format!("keys are {shape:?}, expected [n, {}]", self.dim)));
        }
        gemm(&self.gpu, keys, keys, Some(&self.part), Gemm { trans_a: true, beta: 1.0, ..Default::default() })?;
        self.tokens += shape[0];
        self.part_batches += 1;
        if self.part_batches >= self.fold_every {
            self.fold()?;
        }
        Ok(())
    }

    fn fold(&mut self) -> Result<()> {
        if self.part_batches == 0 {
            return Ok(());
        }
        for (s, p) in self.sum.iter_mut().zip(self.gpu.download(&self.part)?) {
            *s += p as f64;
        }
        self.part = self.gpu.full(&[self.dim, self.dim], 0.0)?;
        self.part_batches = 0;
        Ok(())
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// E[k kᵀ] over the keys added so far (accumulation can go on afterwards).
    pub fn moment(&mut self, layer: usize) -> Result<SecondMoment> {
        if self.tokens == 0 {
            return Err(Error::Edit(format!("covariance of layer {layer}: no tokens")));
        }
        self.fold()?;
        let n = self.tokens as f64;
        Ok(SecondMoment { layer, tokens: self.tokens, dim: self.dim, c0: self.sum.iter().map(|&s| (s / n) as f32).collect() })
    }
}

/// The sequences cut to `max_tokens` tokens in all, grouped into batches of about
/// `batch_tokens` tokens.
pub fn batches(seqs: &[Vec<u32>], max_tokens: usize, batch_tokens: usize) -> Vec<Vec<Vec<u32>>> {
    let mut out: Vec<Vec<Vec<u32>>> = vec![];
    let mut cur = vec![];
    let (mut left, mut cur_tokens) = (max_tokens, 0);
    for s in seqs {
        if left == 0 {
            break;
        }
        let s = &s[..s.len().min(left)];
        if s.is_empty() {
            continue;
        }
        left -= s.len();
        cur_tokens += s.len();
        cur.push(s.to_vec());
        if cur_tokens >= batch_tokens {
            out.push(std::mem::take(&mut cur));
            cur_tokens = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The keys of `layer` for the real tokens of a batch: [tokens, ffn]. Rows of padding (when
/// the sequences differ in length) are dropped before they can reach the sum.
pub fn real_keys(model: &GpuModel, seqs: &[Vec<u32>], layer: usize) -> Result<Tensor> {
    Ok(real_keys_of(model, seqs, &[layer])?.remove(0))
}

/// [`real_keys`] of several layers from one forward pass.
pub fn real_keys_of(model: &GpuModel, seqs: &[Vec<u32>], layers: &[usize]) -> Result<Vec<Tensor>> {
    let batch = Batch::new(seqs)?;
    let keys = model.layers_keys(&batch, layers)?;
    if batch.lens.iter().all(|&l| l == batch.t) {
        return Ok(keys);
    }
    let rows: Vec<u32> = batch.lens.iter().enumerate().flat_map(|(s, &l)| (0..l).map(move |p| (s * batch.t + p) as u32)).collect();
    keys.iter().map(|k| gather_rows(model.gpu(), k, &rows)).collect()
}

pub(crate) fn progress_bar(total: u64, layer: usize, show: bool) -> indicatif::ProgressBar {
    crate::progress::terminal_bar(total, &format!("C0 layer {layer} (tokens)"), show)
}

/// C0 of `layer` over the first `max_tokens` tokens of `seqs`, uncached.
pub fn second_moment(model: &GpuModel, seqs: &[Vec<u32>], layer: usize, max_tokens: usize, opts: &Accumulate) -> Result<SecondMoment> {
    let batches = batches(seqs, max_tokens, opts.batch_tokens);
    let total: usize = batches.iter().flatten().map(Vec::len).sum();
    let bar = progress_bar(total as u64, layer, opts.progress);
    let mut acc = Accumulator::new(model.gpu(), model.config.ffn_hidden, opts.fold_every)?;
    for b in &batches {
        acc.add(&real_keys(model, b, layer)?)?;
        bar.set_position(acc.tokens() as u64);
    }
    bar.finish_and_clear();
    acc.moment(layer)
}

/// C0 of `layer` over `seqs` (cut to `max_tokens`), cached in `dir`: reused when a valid file
/// for this model, layer, token count and token stream is there, rebuilt otherwise.
pub fn cached_second_moment(
    dir: &Path,
    model: &GpuModel,
    seqs: &[Vec<u32>],
    layer: usize,
    max_tokens: usize,
    opts: &Accumulate,
) -> Result<(SecondMoment, Outcome)> {
    let key = cov_cache::CacheKey {
        model_hash: cov_cache::model_hash(model, layer)?,
        layer,
        tokens: max_tokens,
        corpus_hash: cov_cache::tokens_hash(seqs, max_tokens),
    };
    cov_cache::load_or_compute(dir, &key, model.config.ffn_hidden, || second_moment(model, seqs, layer, max_tokens, opts))
}

/// C0 of `layer` over `tokens` tokens of the WordNet corpus, cached under
/// `cache_dir()/stats/`. The entry point for ROME, MEMIT and AlphaEdit.
pub fn layer_second_moment(model: &GpuModel, tok: &Tok, layer: usize, tokens: usize, progress: bool) -> Result<SecondMoment> {
    let seqs = corpus::wordnet_sequences(tok, tokens, model.config.max_seq_len)?;
    let got: usize = seqs.iter().map(Vec::len).sum();
    if got < tokens {
        log::warn!("the corpus has {got} tokens, fewer than the {tokens} asked for C0 of layer {layer}");
    }
    let opts = Accumulate { progress, ..Default::default() };
    Ok(cached_second_moment(&cov_cache::stats_dir(), model, &seqs, layer, tokens, &opts)?.0)
}

/// C0 of each of `layers` over `tokens` tokens of the WordNet corpus (MEMIT and AlphaEdit edit
/// several layers): every layer's file is looked up in the cache, and the missing ones are
/// computed together from one pass over the corpus (one forward up to the highest of them).
pub fn layers_second_moment(model: &GpuModel, tok: &Tok, layers: &[usize], tokens: usize, progress: bool) -> Result<Vec<SecondMoment>> {
    let seqs = corpus::wordnet_sequences(tok, tokens, model.config.max_seq_len)?;
    let dir = cov_cache::stats_dir();
    let mut keys = vec![];
    let mut found: Vec<Option<SecondMoment>> = vec![];
    let corpus_hash = cov_cache::tokens_hash(&seqs, tokens);
    for (&layer, model_hash) in layers.iter().zip(cov_cache::model_hashes(model, layers)?) {
        let key = cov_cache::CacheKey { model_hash, layer, tokens, corpus_hash: corpus_hash.clone() };
        let path = dir.join(key.file_name());
        found.push(if path.exists() {
            cov_cache::load(&path, &key, model.config.ffn_hidden).map_err(|e| log::warn!("{}: cached C0 rejected ({e}); rebuilding it", path.display())).ok()
        } else {
            None
        });
        keys.push(key);
    }
    let missing: Vec<usize> = layers.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(&l, _)| l).collect();
    if !missing.is_empty() {
        let opts = Accumulate { progress, ..Default::default() };
        let batches = batches(&seqs, tokens, opts.batch_tokens);
        let total: usize = batches.iter().flatten().map(Vec::len).sum();
        let bar = progress_bar(total as u64, missing[0], opts.progress);
        let mut accs = missing.iter().map(|_| Accumulator::new(model.gpu(), model.config.ffn_hidden, opts.fold_every)).collect::<Result<Vec<_>>>()?;
        for b in &batches {
            for (acc, k) in accs.iter_mut().zip(real_keys_of(model, b, &missing)?) {
                acc.add(&k)?;
            }
            bar.set_position(accs[0].tokens() as u64);
        }
        bar.finish_and_clear();
        for (acc, &layer) in accs.iter_mut().zip(&missing) {
            let m = acc.moment(layer)?;
            let i = layers.iter().position(|&l| l == layer).expect("a missing layer is one of the layers");
            cov_cache::save(&dir.join(keys[i].file_name()), &keys[i], &m)?;
            found[i] = Some(m);
        }
    }
    Ok(found.into_iter().map(|f| f.expect("every layer found or computed")).collect())
}
