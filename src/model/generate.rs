//! Text generation with the KV cache, and scoring of a continuation.

use super::forward::{Batch, GpuModel, LogitRows, PassBudget};
use super::probe::Probes;
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Sample among the k most likely tokens; 0 means all.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_k: 0, seed: 0 }
    }
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// The next token: the argmax when greedy, else drawn from the softmax of the top-k logits at
/// the temperature. Total on any input: a temperature that is not a positive finite number
/// means greedy, and weights that do not sum to a positive finite number (NaN logits) fall
/// back to the argmax instead of panicking in the draw.
fn sample(logits: &[f32], s: &Sampling, rng: &mut impl Rng) -> u32 {
    if !(s.temperature > 0.0 && s.temperature.is_finite()) {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if s.top_k > 0 && s.top_k < idx.len() {
        idx.select_nth_unstable_by(s.top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(s.top_k);
    }
    let m = idx.iter().map(|&i| logits[i]).fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = idx.iter().map(|&i| (((logits[i] - m) / s.temperature) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax(logits);
    }
    let mut u = rng.random_range(0.0..total);
    for (k, &wk) in w.iter().enumerate() {
        if u < wk {
            return idx[k] as u32;
        }
        u -= wk;
    }
    idx[idx.len() - 1] as u32
}

/// Generates up to `n` tokens after `prompt`, stopping at `eos`; `on_token` sees each one.
pub fn generate(
    model: &GpuModel,
    prompt: &[u32],
    n: usize,
    sampling: Sampling,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let mut rng = crate::testing::rng(sampling.seed);
    let mut out = decode_together(model, &[prompt.to_vec()], n, eos, |_, row| sample(row, &sampling, &mut rng), |_, t| on_token(t))?;
    Ok(out.remove(0))
}

/// Sequences decoded together at most: their KV cache grows with their number (SmolLM2: 46 KB
/// per sequence and position), and the rotation and attention kernels take the positions of
/// 16 sequences per dispatch.
const MAX_TOGETHER: usize = 16;

/// Up to `n` tokens after each prompt, prompt i sampled with `samplings[i]` (its own seeded
/// generator) and stopped at `eos`: what `generate` gives for each prompt alone, up to the
/// rounding of products over several rows, in a fraction of the passes. Prompts of any
/// lengths decode together, each at its own position, in groups of up to 16.
pub fn generate_many(model: &GpuModel, prompts: &[Vec<u32>], n: usize, samplings: &[Sampling], eos: Option<u32>) -> Result<Vec<Vec<u32>>> {
    if samplings.len() != prompts.len() {
        return Err(Error::shape("generate", format!("{} prompts with {} sampling settings", prompts.len(), samplings.len())));
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (group, settings) in prompts.chunks(MAX_TOGETHER).zip(samplings.chunks(MAX_TOGETHER)) {
        let mut rngs: Vec<_> = settings.iter().map(|s| crate::testing::rng(s.seed)).collect();
        out.extend(decode_together(model, group, n, eos, |i, row| sample(row, &settings[i], &mut rngs[i]), |_, _| {})?);
    }
    Ok(out)
}

/// Prefills every prompt in one right-padded pass, then feeds each sequence's last token at its
/// own position until each has `n` tokens or has produced `eos`. `pick(i, logits)` chooses
/// sequence i's next token, called in sequence order at every step; `on_token(i, token)` sees
/// each token kept. A sequence that has stopped keeps its row (its tokens are not kept).
fn decode_together(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    n: usize,
    eos: Option<u32>,
    mut pick: impl FnMut(usize, &[f32]) -> u32,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    let context = model.config.max_seq_len;
    for prompt in prompts {
        if prompt.is_empty() {
            return Err(Error::shape("generate", "the prompt has no tokens"));
        }
        if prompt.len().checked_add(n).is_none_or(|total| total > context) {
            return Err(Error::shape(
                "generate",
                format!("the prompt's {} tokens and {n} new ones exceed the model's context of {context} positions; ask for at most {}", prompt.len(), context.saturating_sub(prompt.len())),
            ));
        }
    }
    let mut out = vec![vec![]; prompts.len()];
    if prompts.is_empty() || n == 0 {
        return Ok(out);
    }
    let batch = Batch::new(prompts)?;
    let mut cache = model.new_cache(prompts.len(), batch.t + n)?;
    let (mut logits, _) = model.forward(&batch, &Probes::default(), LogitRows::Rows(batch.last_rows()), Some(&mut cache))?;
    let v = model.config.vocab_size;
    let mut running = vec![true; prompts.len()];
    let mut next = vec![0u32; prompts.len()];
    for step in 0..n {
        let rows = model.host_logits(&logits).map_err(|e| Error::Numeric(format!("at generated position {step}: {e}")))?;
        for (i, row) in rows.chunks(v).enumerate() {
            if !running[i] {
                continue;
            }
            let tok = pick(i, row);
            out[i].push(tok);
            on_token(i, tok);
            next[i] = tok;
            running[i] = Some(tok) != eos && out[i].len() < n;
        }
        if !running.contains(&true) {
            break;
        }
        let positions: Vec<usize> = prompts.iter().map(|p| p.len() + step).collect();
        logits = model.decode_each(&next, &positions, &mut cache)?;
    }
    Ok(out)
}

/// log p(x) for every entry of a row of logits, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z = logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    logits.iter().map(|&x| x as f64 - z).collect()
}

/// Per-token log-probabilities of `continuation` after `prompt`.
pub fn score(model: &GpuModel, prompt: &[u32], continuation: &[u32]) -> Result<Vec<f64>> {
    if prompt.is_empty() || continuation.is_empty() {
        return Err(Error::shape("score", "prompt and continuation need at least one token each"));
    }
    let seq: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let rows: Vec<usize> = (prompt.len() - 1..seq.len() - 1).collect();
    let (logits, _) = model.forward(&Batch::new(&[seq])?, &Probes::default(), LogitRows::Rows(rows), None)?;
    token_logprobs(model, &logits, continuation)
}

/// log p(tokens[r]) at each row r of `logits`, computed on the GPU: a vocabulary-wide row is
/// never read back, except to name the bad logit where a result is not finite.
fn token_logprobs(model: &GpuModel, logits: &Tensor, tokens: &[u32]) -> Result<Vec<f64>> {
    let lp = model.gpu().download(&crate::ops::loss::token_logprobs(model.gpu(), logits, tokens)?)?;
    if lp.iter().any(|v| !v.is_finite()) {
        model.host_logits(logits)?;
        return Err(Error::Numeric(format!("a log-probability is not finite though the logits are: {lp:?}")));
    }
    Ok(lp.into_iter().map(f64::from).collect())
}

/// Samples `n` tokens after each prompt with one generator shared by all, prompts of one
/// length decoded together (shortest first), the draws of each step in prompt order.
pub fn sample_batch(model: &GpuModel, prompts: &[Vec<u32>], n: usize, sampling: Sampling) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![vec![]; prompts.len()];
    let mut rng = crate::testing::rng(sampling.seed);
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let group: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].len() == len).collect();
        let seqs: Vec<Vec<u32>> = group.iter().map(|&i| prompts[i].clone()).collect();
        let tails = decode_together(model, &seqs, n, None, |_, row| sample(row, &sampling, &mut rng), |_, _| {})?;
        for (&i, tail) in group.iter().zip(tails) {
            out[i] = tail;
        }
    }
    Ok(out)
}

/// Per-token log-probabilities of each (prompt, continuation) pair, in as few batched passes as
/// the adapter's `PassBudget` allows.
pub fn score_many(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Vec<f64>>> {
    score_many_within(model, pairs, PassBudget::for_gpu(model.gpu()))
}

/// `score_many` in passes within `budget`; results in the order of `pairs`.
pub fn score_many_within(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)], budget: PassBudget) -> Result<Vec<Vec<f64>>> {
    Ok(score_tokens_within(model, pairs, budget)?.into_iter().map(|t| t.iter().map(|s| s.logprob).collect()).collect())
}

/// One continuation token read in context (teacher forcing): its log-probability and the
/// token the model itself ranks first at that position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    pub logprob: f64,
    /// The first token of largest logit there (torch.argmax's choice among ties).
    pub top: u32,
}

/// `score_tokens_within` under the adapter's `PassBudget`.
pub fn score_tokens(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Vec<TokenScore>>> {
    score_tokens_within(model, pairs, PassBudget::for_gpu(model.gpu()))
}

/// Each (prompt, continuation) pair's tokens scored in context, in passes within `budget`;
/// results in the order of `pairs`.
///
/// A pair's sequence is its prompt and its continuation without the last token: nothing reads
/// past the last row scored. Pairs with the same sequence share one (CounterFact scores each
/// prompt against two targets, most of them one token long: the same sequence twice), so the
/// model runs each distinct sequence once and reads every pair's tokens from its rows.
pub fn score_tokens_within(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)], budget: PassBudget) -> Result<Vec<Vec<TokenScore>>> {
    if pairs.is_empty() {
        return Err(Error::shape("score", "no (prompt, continuation) pairs to score"));
    }
    if pairs.iter().any(|(p, c)| p.is_empty() || c.is_empty()) {
        return Err(Error::shape("score", "prompt and continuation need at least one token each"));
    }
    let mut seqs: Vec<Vec<u32>> = vec![];
    let mut readers: Vec<Vec<usize>> = vec![];
    let mut index = std::collections::HashMap::new();
    // A pair asked for twice (EasyEdit's locality reads the neighbourhood prompts with the true
    // answer, which CounterFact's scores read too) is scored once and copied.
    let mut first_of = std::collections::HashMap::new();
    let mut copies = vec![];
    for (i, pair @ (p, c)) in pairs.iter().enumerate() {
        if let Some(&first) = first_of.get(pair) {
            copies.push((i, first));
            continue;
        }
        first_of.insert(pair, i);
        let seq: Vec<u32> = p.iter().chain(&c[..c.len() - 1]).copied().collect();
        let s = *index.entry(seq.clone()).or_insert_with(|| {
            seqs.push(seq);
            readers.push(vec![]);
            seqs.len() - 1
        });
        readers[s].push(i);
    }
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let rows: Vec<usize> = readers.iter().map(|r| r.iter().map(|&i| pairs[i].1.len()).sum()).collect();
    let mut out = vec![vec![]; pairs.len()];
    for pass in budget.plan(&lens, &rows) {
        let batch = Batch::new(&pass.iter().map(|&s| seqs[s].clone()).collect::<Vec<_>>())?;
        // Each reader's rows (a row two pairs read appears twice: one token per logit row).
        let mut logit_rows = vec![];
        let mut tokens = vec![];
        for (b, &s) in pass.iter().enumerate() {
            for &i in &readers[s] {
                let (p, c) = &pairs[i];
                logit_rows.extend((p.len() - 1..p.len() - 1 + c.len()).map(|pos| batch.row(b, pos)));
                tokens.extend_from_slice(c);
            }
        }
        let (logits, _) = model.forward(&batch, &Probes::default(), LogitRows::Rows(logit_rows), None)?;
        let lp = token_logprobs(model, &logits, &tokens)?;
        let top = model.gpu().download(&crate::ops::loss::row_argmax(model.gpu(), &logits)?)?;
        // The log-probabilities are finite here, so the rows are: an index is exact in f32.
        let mut scored = lp.into_iter().zip(top).map(|(logprob, top)| TokenScore { logprob, top: top as u32 });
        for &s in &pass {
            for &i in &readers[s] {
                out[i] = scored.by_ref().take(pairs[i].1.len()).collect();
            }
        }
    }
    for (i, first) in copies {
        out[i] = out[first].clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_total_on_nan_temperatures_and_logits() {
        let mut rng = crate::testing::rng(1);
        let logits = [0.5f32, 2.0, -1.0];
        for t in [f32::NAN, f32::INFINITY, -1.0, 0.0] {
            assert_eq!(sample(&logits, &Sampling { temperature: t, top_k: 0, seed: 0 }, &mut rng), 1, "temperature {t}");
        }
        let bad = [f32::NAN, 1.0, f32::NAN];
        let got = sample(&bad, &Sampling { temperature: 1.0, top_k: 2, seed: 0 }, &mut rng);
        assert!(got < 3);
        // An ordinary draw stays among the top k.
        for _ in 0..50 {
            assert_ne!(sample(&logits, &Sampling { temperature: 1.0, top_k: 2, seed: 0 }, &mut rng), 2);
        }
    }
}
