//! Text generation with the KV cache, and scoring of a continuation.

use super::batch::{Batch, PassBudget};
use super::forward::{GpuModel, KvCache, LogitRows};
use super::probe::Probes;
use crate::error::{Error, Result};
use crate::gpu::{PendingRead, Tensor};
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

/// Greedy settings and top-k up to this many read their candidates back (the largest logits of
/// each row, found on the GPU); others read whole rows. The kernel scans a row once per
/// candidate, so a wide top-k is cheaper sorted on the host.
pub const GPU_TOP_K_MAX: usize = 64;

/// How a decode step's logits come back to the sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// Where every setting is greedy or draws from at most [`GPU_TOP_K_MAX`] candidates, each
    /// step is queued on the GPU from the tokens the last step's kernels chose (drew, from the
    /// host's own uniform values) before those come back, so the host's recording of a step
    /// overlaps the GPU's work on the one before instead of waiting for it; the tokens are
    /// the ones `Candidates` gives. Otherwise whole rows, as `Candidates`.
    Ahead,
    /// Each row's largest logits with their tokens where every setting draws from at most
    /// [`GPU_TOP_K_MAX`] (greedy: one), else whole rows; every step waits for them.
    Candidates,
    /// Whole rows of the vocabulary, the candidates chosen on the host: what `Candidates`
    /// replaces, kept to compare the two.
    WholeRows,
}

impl Readback {
    /// What generation uses unless told: `Ahead` on a GPU; `Candidates` on a software adapter,
    /// where the "GPU" is the host's own cores, so recording a step while the last one runs only
    /// competes with it (lavapipe, 2 cores, 2026-12-06: greedy 4 % and top-5 sampling of 8
    /// prompts 7 % fewer tokens/s ahead than waiting, `revive bench forward`).
    pub fn default_for(model: &GpuModel) -> Readback {
        if model.gpu().is_cpu() {
            Readback::Candidates
        } else {
            Readback::Ahead
        }
    }
}

/// What a setting draws from: its k largest logits (greedy: the largest), or the whole row.
fn wanted(s: &Sampling) -> Option<usize> {
    if is_greedy(s) {
        Some(1)
    } else if s.top_k > 0 {
        Some(s.top_k)
    } else {
        None
    }
}

/// A temperature that is not a positive finite number means greedy.
fn is_greedy(s: &Sampling) -> bool {
    !(s.temperature > 0.0 && s.temperature.is_finite())
}

/// The candidates a decode step reads back for these settings: the most any of them draws
/// from, or None where one needs whole rows.
fn candidates_for(settings: &[Sampling], readback: Readback) -> Option<usize> {
    if readback == Readback::WholeRows {
        return None;
    }
    settings.iter().map(wanted).try_fold(1, |most, k| k.filter(|&k| k <= GPU_TOP_K_MAX).map(|k| most.max(k)))
}

/// What a decode step reads back, and whether steps run ahead of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// Candidates per row, or None for whole rows (as [`candidates_for`]).
    top: Option<usize>,
    /// Queue each step from the tokens the GPU chose (every setting reads candidates).
    ahead: bool,
}

fn reading(settings: &[Sampling], readback: Readback) -> Reading {
    let top = candidates_for(settings, readback);
    Reading { top, ahead: readback == Readback::Ahead && top.is_some() }
}

/// A row's logits as the sampler sees them.
enum Candidates<'a> {
    /// The row's largest logits as (token, logit), largest first and the lower token first
    /// among equal logits, at least as many as the setting draws from.
    Top(&'a [(u32, f32)]),
    /// The whole row.
    Row(&'a [f32]),
}

/// A row's k largest logits in the order of [`Candidates::Top`]; the row is finite.
fn top_of_row(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    let order = |a: &u32, b: &u32| row[*b as usize].partial_cmp(&row[*a as usize]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b));
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// A uniform draw in [0, 1) exactly as `rand`'s `random_range(0.0..x)` takes it before scaling
/// (52 random bits under the exponent of 1, less 1), so that a draw made before the weights
/// are known gives the token a draw made after them gave.
fn uniform01(rng: &mut impl Rng) -> f64 {
    f64::from_bits((rng.random::<u64>() >> 12) | 0x3FF0_0000_0000_0000) - 1.0
}

/// The next token: the argmax when greedy (the first of equal maxima), else drawn from the
/// softmax of the top-k logits (all when k is 0) at the temperature, the candidates taken
/// largest first (top-k) or in token order (all). Total on any input: weights that do not sum
/// to a positive finite number fall back to the argmax instead of panicking in the draw.
#[cfg(test)]
fn sample(c: Candidates<'_>, s: &Sampling, rng: &mut impl Rng) -> u32 {
    let u = (!is_greedy(s)).then(|| uniform01(rng));
    sample_with(c, s, u)
}

/// [`sample`] with its uniform draw `u` in [0, 1) made beforehand (None when greedy).
fn sample_with(c: Candidates<'_>, s: &Sampling, u: Option<f64>) -> u32 {
    let owned;
    let cands: &[(u32, f32)] = match (c, wanted(s)) {
        (Candidates::Top(top), Some(k)) => &top[..k.min(top.len())],
        (Candidates::Row(row), Some(k)) => {
            owned = top_of_row(row, k);
            &owned
        }
        (Candidates::Row(row), None) => {
            owned = row.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            &owned
        }
        // Not reached: decode_together reads whole rows where a setting draws from them.
        (Candidates::Top(top), None) => top,
    };
    let first_max = || cands.iter().fold(cands[0], |best, &c| if c.1 > best.1 { c } else { best }).0;
    let Some(u) = u.filter(|_| !is_greedy(s)) else {
        return first_max();
    };
    let m = cands.iter().fold(f32::NEG_INFINITY, |a, c| a.max(c.1));
    let w: Vec<f64> = cands.iter().map(|c| (((c.1 - m) / s.temperature) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return first_max();
    }
    let mut u = u * total;
    for (c, &wk) in cands.iter().zip(&w) {
        if u < wk {
            return c.0;
        }
        u -= wk;
    }
    cands[cands.len() - 1].0
}

/// Where a decode's uniform draws come from: one generator per sequence, or one shared by all,
/// drawn in sequence order at every step. Greedy settings draw nothing.
enum Draws<'a> {
    Each(Vec<rand::rngs::StdRng>),
    Shared(&'a mut rand::rngs::StdRng),
}

impl Draws<'_> {
    fn next(&mut self, i: usize) -> f64 {
        match self {
            Draws::Each(rngs) => uniform01(&mut rngs[i]),
            Draws::Shared(rng) => uniform01(*rng),
        }
    }

    /// Whether drawing every sequence's value of every step beforehand gives each sequence the
    /// values drawing them as the tokens come would: where nothing draws, with a generator per
    /// sequence or a single sequence; with one shared by several only where no sequence stops
    /// before the others (no end token), since a stopped sequence draws no more. A shared
    /// generator is left past all the values drawn beforehand, a sequence that stopped early
    /// or not.
    fn can_draw_ahead(&self, settings: &[Sampling], eos: Option<u32>) -> bool {
        settings.iter().all(is_greedy) || matches!(self, Draws::Each(_)) || settings.len() == 1 || eos.is_none()
    }
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
    let read = reading(&[sampling], Readback::default_for(model));
    let mut rng = crate::testing::rng(sampling.seed);
    let draws = Draws::Shared(&mut rng);
    let mut out = decode_together(model, &[prompt.to_vec()], n, eos, read, &[sampling], draws, |_, t| on_token(t))?;
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
    generate_many_reading(model, prompts, n, samplings, eos, Readback::default_for(model))
}

/// `generate_many` with the logits read back as `readback` says: the same tokens either way.
pub fn generate_many_reading(model: &GpuModel, prompts: &[Vec<u32>], n: usize, samplings: &[Sampling], eos: Option<u32>, readback: Readback) -> Result<Vec<Vec<u32>>> {
    generate_groups(model, prompts, n, samplings, eos, readback, &mut |_, _| {})
}

/// `generate_many` telling `on_token(prompt, token)` each token kept as it comes back, for a
/// caller that shows progress.
pub fn generate_many_reporting(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    n: usize,
    samplings: &[Sampling],
    eos: Option<u32>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    generate_groups(model, prompts, n, samplings, eos, Readback::default_for(model), on_token)
}

fn generate_groups(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    n: usize,
    samplings: &[Sampling],
    eos: Option<u32>,
    readback: Readback,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    if samplings.len() != prompts.len() {
        return Err(Error::shape("generate", format!("{} prompts with {} sampling settings", prompts.len(), samplings.len())));
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (g, (group, settings)) in prompts.chunks(MAX_TOGETHER).zip(samplings.chunks(MAX_TOGETHER)).enumerate() {
        let draws = Draws::Each(settings.iter().map(|s| crate::testing::rng(s.seed)).collect());
        let read = reading(settings, readback);
        let first = g * MAX_TOGETHER;
        out.extend(decode_together(model, group, n, eos, read, settings, draws, |i, t| on_token(first + i, t))?);
    }
    Ok(out)
}

thread_local! {
    /// Steps this thread ran again because the host's draw differed from the GPU's (see
    /// [`decode_ahead`]); per thread, so that a test counts its own.
    static STEPS_REDONE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static SKEWED_DRAWS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many generation steps queued from the GPU's draw this thread ran again with the host's
/// tokens.
pub fn steps_redone() -> usize {
    STEPS_REDONE.with(|n| n.get())
}

/// Test hook: while on, this thread's generation hands the GPU u + ½ (mod 1) for each draw u
/// the host makes, so that the GPU's token differs from the host's at most steps and the
/// steps are run again: the path a rounding takes, made common enough to test.
#[doc(hidden)]
pub fn skew_gpu_draws(on: bool) {
    SKEWED_DRAWS.with(|s| s.set(on));
}

/// Prefills every prompt in one right-padded pass, then feeds each sequence's last token at its
/// own position until each has `n` tokens or has produced `eos`. Sequence i's next token is
/// drawn as `settings[i]` says (`sample_with`), in sequence order at every step, from each
/// row's `read.top` largest logits (found on the GPU: a few bytes a row come back) or, where
/// that is None, from the whole row, with the uniform draw that `draws` gives it (none where
/// the setting is greedy); `on_token(i, token)` sees each token kept. A sequence that has
/// stopped keeps its row (its tokens are not kept). With `read.ahead`, where the draws can be
/// made beforehand, each step is queued from the GPU's own choice before that choice comes
/// back (`decode_ahead`).
#[allow(clippy::too_many_arguments)]
fn decode_together(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    n: usize,
    eos: Option<u32>,
    read: Reading,
    settings: &[Sampling],
    mut draws: Draws<'_>,
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
    let mut streams = Streams { out: vec![vec![]; prompts.len()], running: vec![true; prompts.len()], n, eos };
    if prompts.is_empty() || n == 0 {
        return Ok(streams.out);
    }
    let batch = Batch::new(prompts)?;
    let mut cache = model.new_cache(prompts.len(), batch.t + n)?;
    let (logits, _) = model.forward(&batch, &Probes::default(), LogitRows::Rows(batch.last_rows()), Some(&mut cache))?;
    let v = model.config.vocab_size;
    let top = read.top.map(|k| k.min(v)).filter(|&k| crate::ops::loss::row_top_k_fits(model.gpu(), v, k));
    let ahead = read.ahead && draws.can_draw_ahead(settings, eos);
    if let Some(k) = top.filter(|_| ahead) {
        // Every draw of every step, step by step in sequence order, as the loop below makes them.
        let us: Vec<Option<f64>> = (0..n).flat_map(|_| 0..prompts.len()).map(|i| (!is_greedy(&settings[i])).then(|| draws.next(i))).collect();
        return decode_ahead(model, prompts, logits, &mut cache, streams, Ahead { k, settings, us: &us }, on_token);
    }
    let mut logits = logits;
    let mut next = vec![0u32; prompts.len()];
    for step in 0..n {
        let (rows, whole) = match top {
            Some(k) => (candidate_rows(model, &logits, k).map_err(|e| at_step(step, e))?, vec![]),
            None => (vec![], model.host_logits(&logits).map_err(|e| at_step(step, e))?),
        };
        for i in 0..prompts.len() {
            if !streams.running[i] {
                continue;
            }
            let candidates = match top {
                Some(k) => Candidates::Top(&rows[i * k..(i + 1) * k]),
                None => Candidates::Row(&whole[i * v..(i + 1) * v]),
            };
            let u = (!is_greedy(&settings[i])).then(|| draws.next(i));
            next[i] = sample_with(candidates, &settings[i], u);
            streams.take(i, next[i], &mut on_token);
        }
        if !streams.running.contains(&true) {
            break;
        }
        logits = model.decode_each(&next, &positions(prompts, step), &mut cache)?;
    }
    Ok(streams.out)
}

/// What a decode that runs ahead draws from: k candidates a row, each sequence's setting, and
/// every draw beforehand (`us[step · sequences + i]`, None for greedy settings).
struct Ahead<'a> {
    k: usize,
    settings: &'a [Sampling],
    us: &'a [Option<f64>],
}

/// A step queued and not yet read back: its logits (kept to name a fault), the tokens the GPU
/// chose, and the ways back of its candidates and (where it drew) of those tokens.
struct InFlight {
    logits: Tensor,
    chosen: Tensor,
    candidates: PendingRead,
    drawn: Option<PendingRead>,
}

/// `decode_together` with each step queued from the tokens the GPU chose at the step before,
/// before they come back: the largest candidate where every setting is greedy (or draws from
/// one), else a draw among the k candidates on the GPU (`ops::loss::sample_top_k`) from the
/// same uniform values the host uses. The host draws each token too (`sample_with`) from the
/// candidates it reads back; where its token differs from the GPU's — a draw within f32 rounding of a boundary between two
/// candidates — the queued step is dropped and run again from the host's tokens, so the
/// tokens are the ones waiting for each step gives.
#[allow(clippy::too_many_arguments)]
fn decode_ahead(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    logits: Tensor,
    cache: &mut KvCache,
    mut streams: Streams,
    ahead: Ahead<'_>,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    let (n, b, k) = (streams.n, prompts.len(), ahead.k);
    let gpu = model.gpu();
    // Each row's (temperature, k, u) at every step, for the GPU's draws; none where one
    // candidate is all there is to take.
    let skewed = SKEWED_DRAWS.with(|s| s.get());
    let table = if k > 1 {
        let rows: Vec<f32> = (0..n * b)
            .flat_map(|r| {
                let s = &ahead.settings[r % b];
                let t = if is_greedy(s) { 0.0 } else { s.temperature };
                let u = ahead.us[r].unwrap_or(0.0);
                let u = if skewed { (u + 0.5).fract() } else { u };
                let drawn_from = wanted(s).expect("running ahead, every setting reads candidates");
                [t, drawn_from as f32, u as f32]
            })
            .collect();
        Some(gpu.upload(&rows, &[n * b, 3])?)
    } else {
        None
    };
    let queue = |logits: Tensor, step: usize| -> Result<InFlight> {
        let top = crate::ops::loss::row_top_k(gpu, &logits, k)?;
        let candidates = gpu.download_later(&top)?;
        let (chosen, drawn) = match &table {
            Some(table) => {
                let chosen = crate::ops::loss::sample_top_k(gpu, &top, table, step * b)?;
                let drawn = gpu.download_later(&chosen)?;
                (chosen, Some(drawn))
            }
            // k = 1: the index plane is the tokens.
            None => (top, None),
        };
        Ok(InFlight { logits, chosen, candidates, drawn })
    };
    let mut in_flight = queue(logits, 0)?;
    for step in 0..n {
        let InFlight { logits, chosen, candidates, drawn } = in_flight;
        // A stopped sequence's row decodes whatever was chosen for it; nothing reads it.
        let filled = cache.len;
        let next = if step + 1 < n { Some(queue(model.decode_chosen(&chosen, 1, &positions(prompts, step), cache)?, step + 1)?) } else { None };
        let rows = candidates_from(model, &candidates.finish_f32()?, &logits).map_err(|e| at_step(step, e))?;
        let gpu_tokens: Vec<u32> = match drawn {
            // Finite: the candidates were.
            Some(drawn) => drawn.finish_f32()?.into_iter().map(|t| t as u32).collect(),
            None => rows.iter().map(|c| c.0).collect(),
        };
        let mut tokens = gpu_tokens.clone();
        for i in 0..b {
            if streams.running[i] {
                tokens[i] = sample_with(Candidates::Top(&rows[i * k..(i + 1) * k]), &ahead.settings[i], ahead.us[step * b + i]);
                streams.take(i, tokens[i], &mut on_token);
            }
        }
        let Some(next) = next.filter(|_| streams.running.contains(&true)) else {
            break;
        };
        in_flight = if tokens == gpu_tokens {
            next
        } else {
            // The queued step took a token the host did not choose: its work is dropped unread
            // (its reads still count in the runtime's read-back bytes) and the step runs again
            // from the host's tokens, over the same cache positions and with the cache's length
            // as it was, so that it takes the path the waiting step takes.
            STEPS_REDONE.with(|n| n.set(n.get() + 1));
            log::debug!("generation step {step}: the GPU drew {gpu_tokens:?}, the host {tokens:?}; the next step runs again");
            drop(next);
            cache.len = filled;
            queue(model.decode_each(&tokens, &positions(prompts, step), cache)?, step + 1)?
        };
    }
    Ok(streams.out)
}

/// Where each sequence's token of generation step `step` goes.
fn positions(prompts: &[Vec<u32>], step: usize) -> Vec<usize> {
    prompts.iter().map(|p| p.len() + step).collect()
}

/// The tokens kept so far and which sequences still run.
struct Streams {
    out: Vec<Vec<u32>>,
    running: Vec<bool>,
    n: usize,
    eos: Option<u32>,
}

impl Streams {
    fn take(&mut self, i: usize, tok: u32, on_token: &mut impl FnMut(usize, u32)) {
        self.out[i].push(tok);
        on_token(i, tok);
        self.running[i] = Some(tok) != self.eos && self.out[i].len() < self.n;
    }
}

fn at_step(step: usize, e: Error) -> Error {
    Error::Numeric(format!("at generated position {step}: {e}"))
}

/// Each row's `k` largest logits as (token, logit), found on the GPU: [rows · k]. A row that is
/// not finite is named by reading the logits back (`host_logits`' error).
fn candidate_rows(model: &GpuModel, logits: &Tensor, k: usize) -> Result<Vec<(u32, f32)>> {
    let gpu = model.gpu();
    candidates_from(model, &gpu.download(&crate::ops::loss::row_top_k(gpu, logits, k)?)?, logits)
}

/// `row_top_k`'s result as read back, (token, logit) pairs, the logits it came from read back
/// to name a row that is not finite.
fn candidates_from(model: &GpuModel, top: &[f32], logits: &Tensor) -> Result<Vec<(u32, f32)>> {
    if top.iter().any(|x| !x.is_finite()) {
        model.host_logits(logits)?;
        return Err(Error::Numeric("the logits' largest values came back not finite though the logits are".into()));
    }
    let (indices, values) = top.split_at(top.len() / 2);
    // Indices are exact in f32 below 2^24; row_top_k refuses wider rows.
    Ok(indices.iter().zip(values).map(|(&i, &v)| (i as u32, v)).collect())
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

/// The sequences a scoring run needs: `seqs[s]` is read by the pairs `readers[s]` (every pair's
/// prompt and continuation are the start of the sequence it reads), `copies` are (pair, pair
/// scored in its place) for pairs asked for twice.
struct ScoringPlan {
    seqs: Vec<Vec<u32>>,
    readers: Vec<Vec<usize>>,
    copies: Vec<(usize, usize)>,
}

impl ScoringPlan {
    /// A pair's own sequence is its prompt and its continuation without the last token. A pair
    /// asked for twice (EasyEdit's locality reads the neighbourhood prompts with the true answer,
    /// which CounterFact's scores read too) is scored once and copied; pairs with the same
    /// sequence share it; and a sequence that begins another runs inside it, since causal
    /// attention gives its rows the same values there: CounterFact scores each prompt against a
    /// one-token and, for a third of the geography requests, a longer target, whose sequence
    /// starts with the prompt.
    fn of(pairs: &[(Vec<u32>, Vec<u32>)]) -> ScoringPlan {
        let mut own: Vec<Vec<u32>> = vec![];
        let mut readers: Vec<Vec<usize>> = vec![];
        let mut index = std::collections::HashMap::new();
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
                own.push(seq);
                readers.push(vec![]);
                own.len() - 1
            });
            readers[s].push(i);
        }
        // In lexicographic order the sequences a sequence begins follow it directly, so it
        // begins another exactly when it begins the next one; following that chain from the
        // end gives each sequence the longest one it runs inside.
        let mut order: Vec<usize> = (0..own.len()).collect();
        order.sort_by(|&a, &b| own[a].cmp(&own[b]));
        let mut host: Vec<usize> = (0..own.len()).collect();
        for j in (0..order.len().saturating_sub(1)).rev() {
            let (s, next) = (order[j], order[j + 1]);
            if own[next].starts_with(&own[s]) {
                host[s] = host[next];
            }
        }
        let mut seqs = vec![];
        let mut merged: Vec<Vec<usize>> = vec![];
        let mut place = vec![usize::MAX; own.len()];
        for &h in &host {
            if place[h] == usize::MAX {
                place[h] = seqs.len();
                seqs.push(std::mem::take(&mut own[h]));
                merged.push(vec![]);
            }
        }
        for (s, r) in readers.into_iter().enumerate() {
            merged[place[host[s]]].extend(r);
        }
        ScoringPlan { seqs, readers: merged, copies }
    }
}

/// A scoring pass recorded and not yet read back.
struct ScoringPass {
    /// The sequences it ran (indices into the deduplicated sequences), in batch order.
    pass: Vec<usize>,
    batch: Batch,
    logit_rows: Vec<usize>,
    logprobs: PendingRead,
    top: PendingRead,
}

impl ScoringPass {
    /// Each reader's scores into `out`.
    fn finish(self, model: &GpuModel, readers: &[Vec<usize>], pairs: &[(Vec<u32>, Vec<u32>)], out: &mut [Vec<TokenScore>]) -> Result<()> {
        let lp = self.logprobs.finish_f32()?;
        let top = self.top.finish_f32()?;
        if lp.iter().any(|v| !v.is_finite()) {
            let (logits, _) = model.forward(&self.batch, &Probes::default(), LogitRows::Rows(self.logit_rows), None)?;
            model.host_logits(&logits)?;
            return Err(Error::Numeric(format!("a log-probability is not finite though the logits are: {lp:?}")));
        }
        // The log-probabilities are finite here, so the rows are: an index is exact in f32.
        let mut scored = lp.into_iter().zip(top).map(|(logprob, top)| TokenScore { logprob: f64::from(logprob), top: top as u32 });
        for &s in &self.pass {
            for &i in &readers[s] {
                out[i] = scored.by_ref().take(pairs[i].1.len()).collect();
            }
        }
        Ok(())
    }
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
    sample_batch_reading(model, prompts, n, sampling, Readback::default_for(model))
}

/// `sample_batch` with the logits read back as `readback` says: the same tokens either way.
pub fn sample_batch_reading(model: &GpuModel, prompts: &[Vec<u32>], n: usize, sampling: Sampling, readback: Readback) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![vec![]; prompts.len()];
    let mut rng = crate::testing::rng(sampling.seed);
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let group: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].len() == len).collect();
        let seqs: Vec<Vec<u32>> = group.iter().map(|&i| prompts[i].clone()).collect();
        let read = reading(&[sampling], readback);
        let tails = decode_together(model, &seqs, n, None, read, &vec![sampling; seqs.len()], Draws::Shared(&mut rng), |_, _| {})?;
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

/// `score_tokens` telling `on_pass(done, passes)` as each pass's scores come back (0 of them
/// first), for a caller that shows progress.
pub fn score_tokens_reporting(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)], on_pass: &mut dyn FnMut(usize, usize)) -> Result<Vec<Vec<TokenScore>>> {
    score_tokens_planned(model, pairs, PassBudget::for_gpu(model.gpu()), on_pass)
}

/// Each (prompt, continuation) pair's tokens scored in context, in passes within `budget`;
/// results in the order of `pairs`.
///
/// A pair's sequence is its prompt and its continuation without the last token: nothing reads
/// past the last row scored. Pairs with the same sequence share one (CounterFact scores each
/// prompt against two targets, most of them one token long: the same sequence twice), and a
/// sequence that begins another is read from that one's rows (`ScoringPlan::of`), so the
/// model runs each sequence no other contains once and reads every pair's tokens from its rows.
pub fn score_tokens_within(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)], budget: PassBudget) -> Result<Vec<Vec<TokenScore>>> {
    score_tokens_planned(model, pairs, budget, &mut |_, _| {})
}

fn score_tokens_planned(model: &GpuModel, pairs: &[(Vec<u32>, Vec<u32>)], budget: PassBudget, on_pass: &mut dyn FnMut(usize, usize)) -> Result<Vec<Vec<TokenScore>>> {
    if pairs.is_empty() {
        return Err(Error::shape("score", "no (prompt, continuation) pairs to score"));
    }
    if pairs.iter().any(|(p, c)| p.is_empty() || c.is_empty()) {
        return Err(Error::shape("score", "prompt and continuation need at least one token each"));
    }
    let ScoringPlan { seqs, readers, copies } = ScoringPlan::of(pairs);
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let rows: Vec<usize> = readers.iter().map(|r| r.iter().map(|&i| pairs[i].1.len()).sum()).collect();
    let mut out = vec![vec![]; pairs.len()];
    let gpu = model.gpu();
    // Each pass is recorded before the one before it is read back, so the host's recording
    // overlaps the GPU's work; one pass waits at a time.
    let mut in_flight: Option<ScoringPass> = None;
    let plan = budget.plan(&lens, &rows);
    let passes = plan.len();
    on_pass(0, passes);
    for (recorded, pass) in plan.into_iter().enumerate() {
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
        let (logits, _) = model.forward(&batch, &Probes::default(), LogitRows::Rows(logit_rows.clone()), None)?;
        let logprobs = gpu.download_later(&crate::ops::loss::token_logprobs(gpu, &logits, &tokens)?)?;
        let top = gpu.download_later(&crate::ops::loss::row_argmax(gpu, &logits)?)?;
        // The logits go back to the pool; a pass whose scores are not finite runs again to
        // name the bad logit.
        drop(logits);
        if let Some(done) = in_flight.replace(ScoringPass { pass, batch, logit_rows, logprobs, top }) {
            done.finish(model, &readers, pairs, &mut out)?;
            on_pass(recorded, passes);
        }
    }
    if let Some(done) = in_flight {
        done.finish(model, &readers, pairs, &mut out)?;
        on_pass(passes, passes);
    }
    for (i, first) in copies {
        out[i] = out[first].clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draw made before the weights are known is the one `rand` makes for a range of them,
    /// bit for bit, so that drawing ahead keeps every seed's tokens.
    #[test]
    fn a_draw_made_ahead_is_rands_draw_of_the_range() {
        for seed in 0..20 {
            let (mut a, mut b) = (crate::testing::rng(seed), crate::testing::rng(seed));
            for total in [1.0, 1.5, 3.75, 1e-300, 2.0f64.powi(60), 7.123456789, f64::MIN_POSITIVE, 1.0 + f64::EPSILON] {
                let want: f64 = a.random_range(0.0..total);
                assert_eq!((uniform01(&mut b) * total).to_bits(), want.to_bits(), "seed {seed}, total {total}");
            }
        }
    }

    /// Every pair is read from exactly one planned sequence that begins with its own (or copied
    /// from an identical pair scored earlier), and no planned sequence begins another: on
    /// random pairs over a few tokens, where prefixes abound, and on CounterFact's shape.
    #[test]
    fn a_scoring_plan_runs_only_sequences_no_other_contains() {
        let mut rng = crate::testing::rng(5);
        let mut cases: Vec<Vec<(Vec<u32>, Vec<u32>)>> = (0..300)
            .map(|_| {
                let n = rng.random_range(1..25);
                let mut draw = |lo: usize, hi: usize| (0..rng.random_range(lo..hi)).map(|_| rng.random_range(0..3u32)).collect::<Vec<u32>>();
                (0..n).map(|_| (draw(1, 5), draw(1, 4))).collect()
            })
            .collect();
        // A prompt against a one-token and a two-token target: one sequence, the longer.
        cases.push(vec![(vec![5, 6], vec![7]), (vec![5, 6], vec![8, 9])]);
        for (case, pairs) in cases.iter().enumerate() {
            let plan = ScoringPlan::of(pairs);
            let mut read = vec![0; pairs.len()];
            for (s, readers) in plan.readers.iter().enumerate() {
                assert!(!readers.is_empty(), "case {case}: sequence {s} has no reader");
                for &i in readers {
                    read[i] += 1;
                    let (p, c) = &pairs[i];
                    let own: Vec<u32> = p.iter().chain(&c[..c.len() - 1]).copied().collect();
                    assert!(plan.seqs[s].starts_with(&own), "case {case}: pair {i} {own:?} read from {:?}", plan.seqs[s]);
                }
            }
            for &(i, first) in &plan.copies {
                assert_eq!(pairs[i], pairs[first], "case {case}");
                assert!(first < i, "case {case}: a copy of a later pair");
                read[i] += 1;
            }
            assert!(read.iter().all(|&r| r == 1), "case {case}: {read:?}");
            for (a, x) in plan.seqs.iter().enumerate() {
                for (b, y) in plan.seqs.iter().enumerate() {
                    assert!(a == b || !y.starts_with(x), "case {case}: planned {x:?} begins planned {y:?}");
                }
            }
        }
        assert_eq!(ScoringPlan::of(cases.last().unwrap()).seqs, vec![vec![5, 6, 8]]);
    }

    #[test]
    fn sampling_is_total_on_nan_temperatures_and_logits() {
        let mut rng = crate::testing::rng(1);
        let logits = [0.5f32, 2.0, -1.0];
        for t in [f32::NAN, f32::INFINITY, -1.0, 0.0] {
            assert_eq!(sample(Candidates::Row(&logits), &Sampling { temperature: t, top_k: 0, seed: 0 }, &mut rng), 1, "temperature {t}");
        }
        let bad = [f32::NAN, 1.0, f32::NAN];
        let got = sample(Candidates::Row(&bad), &Sampling { temperature: 1.0, top_k: 2, seed: 0 }, &mut rng);
        assert!(got < 3);
        // An ordinary draw stays among the top k, from a whole row or from candidates.
        let top = top_of_row(&logits, 3);
        assert_eq!(top, [(1, 2.0), (0, 0.5), (2, -1.0)]);
        for _ in 0..50 {
            let s = Sampling { temperature: 1.0, top_k: 2, seed: 0 };
            assert_ne!(sample(Candidates::Row(&logits), &s, &mut rng), 2);
            assert_ne!(sample(Candidates::Top(&top), &s, &mut rng), 2);
        }
    }

    /// The host's top-k orders as the GPU's: largest first, the lower token first among equal
    /// logits (zero and negative zero equal), whatever k cuts through a run of ties.
    #[test]
    fn the_hosts_top_k_orders_ties_by_token() {
        let row = [1.0f32, 3.0, 3.0, -0.0, 0.0, 3.0, 1.0];
        assert_eq!(top_of_row(&row, 2), [(1, 3.0), (2, 3.0)]);
        assert_eq!(top_of_row(&row, 4), [(1, 3.0), (2, 3.0), (5, 3.0), (0, 1.0)]);
        let all: Vec<u32> = top_of_row(&row, 9).into_iter().map(|c| c.0).collect();
        assert_eq!(all, [1, 2, 5, 0, 6, 3, 4]);
    }

    /// A setting reads candidates from the GPU when every setting of the group draws from at
    /// most GPU_TOP_K_MAX, the most of them; else whole rows.
    #[test]
    fn candidates_are_read_where_every_setting_allows() {
        let greedy = Sampling::default();
        let top = |k| Sampling { temperature: 1.0, top_k: k, seed: 0 };
        assert_eq!(candidates_for(&[greedy], Readback::Candidates), Some(1));
        assert_eq!(candidates_for(&[greedy, top(5), top(3)], Readback::Candidates), Some(5));
        assert_eq!(candidates_for(&[top(GPU_TOP_K_MAX)], Readback::Candidates), Some(GPU_TOP_K_MAX));
        assert_eq!(candidates_for(&[greedy, top(GPU_TOP_K_MAX + 1)], Readback::Candidates), None);
        assert_eq!(candidates_for(&[greedy, top(0)], Readback::Candidates), None);
        assert_eq!(candidates_for(&[greedy], Readback::WholeRows), None);
        assert_eq!(candidates_for(&[greedy, top(5)], Readback::Ahead), Some(5));
    }

    #[test]
    fn only_settings_that_read_candidates_run_ahead() {
        let greedy = Sampling::default();
        let top = |k| Sampling { temperature: 1.0, top_k: k, seed: 0 };
        let ahead = |s: &[Sampling], r| reading(s, r).ahead;
        assert!(ahead(&[greedy, greedy], Readback::Ahead));
        assert!(ahead(&[greedy, top(1)], Readback::Ahead));
        assert!(ahead(&[Sampling { temperature: f32::NAN, top_k: 0, seed: 0 }], Readback::Ahead));
        assert!(ahead(&[greedy, top(2), top(GPU_TOP_K_MAX)], Readback::Ahead));
        assert!(!ahead(&[greedy, top(GPU_TOP_K_MAX + 1)], Readback::Ahead));
        assert!(!ahead(&[top(0)], Readback::Ahead));
        assert!(!ahead(&[greedy], Readback::Candidates));
        assert!(!ahead(&[greedy], Readback::WholeRows));
    }
}
