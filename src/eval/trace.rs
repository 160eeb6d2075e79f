//! Causal tracing (Meng et al. 2022, ROME §2.1): which hidden states carry a fact. The subject's
//! token embeddings are corrupted with Gaussian noise, which drops the probability of the answer;
//! then one state of the clean run is put back at a time — the residual stream after a layer at
//! one token (`hidden`), or the MLP outputs (`mlp`) or the attention outputs (`attn`) of a
//! window of layers at one token — and the probability it brings back measures how much of the
//! fact passes through there. Averaged over facts, the MLP's effect at the subject's last token
//! is where ROME and MEMIT choose the layers they edit ([`choose_layers`]).
//!
//! One algorithm over any forward pass that takes probes ([`TraceRunner`]): the GPU model and
//! the f64 CPU oracle, so the GPU trace is tested against the oracle's.

use crate::error::{Error, Result};
use crate::model::probe::{Captured, Probes, Site};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What is put back from the clean run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceKind {
    /// The residual stream after a layer (ROME's "hidden state", window 1).
    Hidden,
    /// The MLP outputs of a window of layers around each (ROME's 10), at one token.
    Mlp,
    /// The attention outputs of a window of layers around each, at one token.
    Attn,
}

impl std::str::FromStr for TraceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hidden" => Ok(TraceKind::Hidden),
            "mlp" => Ok(TraceKind::Mlp),
            "attn" => Ok(TraceKind::Attn),
            _ => Err(Error::Edit(format!("unknown trace kind '{s}' (hidden, mlp or attn)"))),
        }
    }
}

/// A forward pass with probes: the probability of `target` at each sequence's last token.
pub trait TraceRunner {
    fn n_layers(&self) -> usize;
    fn hidden(&self) -> usize;
    fn run(&self, seqs: &[Vec<u32>], probes: &Probes, target: u32) -> Result<(Vec<f64>, Captured)>;
}

/// One fact to trace: its tokens, the subject's tokens [first, last] and the answer's first token.
#[derive(Debug, Clone)]
pub struct TraceInput {
    pub ids: Vec<u32>,
    pub subject: [usize; 2],
    pub target: u32,
}

#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub samples: usize,
    /// The noise's standard deviation (ROME: 3 × the std of subject embeddings).
    pub noise: f64,
    pub seed: u64,
    /// At most this many sequences in one pass.
    pub max_batch: usize,
    /// The MLP and attention kinds restore layers l − window/2 ..< l + window − window/2
    /// (ROME: 10).
    pub window: usize,
    /// Start each restoring pass at the first layer it changes, from the corrupted run's
    /// residual stream there, instead of from the embedding: what it computes to f32 rounding
    /// (the residual is kept in f32), in about half the layers.
    pub skip_unchanged_layers: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub kind: TraceKind,
    pub subject: [usize; 2],
    pub target: u32,
    /// P(target) of the clean run, and the mean over the corrupted runs.
    pub clean: f64,
    pub corrupted: f64,
    /// Mean P(target) with the state of (layer, token) restored: [layer][token].
    pub restored: Vec<Vec<f64>>,
}

impl Trace {
    /// The restored probability at one token across the layers.
    pub fn at_token(&self, token: usize) -> Vec<f64> {
        self.restored.iter().map(|row| row[token]).collect()
    }
}

/// The noise of each sample at each subject token: [sample][subject token][hidden], from the
/// seed alone, so that every runner corrupts the same way.
pub fn noise_of(input: &TraceInput, hidden: usize, s: &TraceSettings) -> Vec<Vec<Vec<f32>>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let tokens = input.subject[1] - input.subject[0] + 1;
    (0..s.samples).map(|_| (0..tokens).map(|_| (0..hidden).map(|_| (gaussian(&mut rng) * s.noise) as f32).collect()).collect()).collect()
}

/// A standard normal draw (Box–Muller): the one distribution needed, not worth a crate.
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// How many times [`trace`] calls its `tick` for one fact: after each layer of each kind.
pub fn layers_to_trace(runner: &dyn TraceRunner, kinds: &[TraceKind]) -> usize {
    runner.n_layers() * kinds.len()
}

/// Traces one fact for each kind asked, with the noise drawn from the settings' seed.
pub fn trace(runner: &dyn TraceRunner, input: &TraceInput, kinds: &[TraceKind], s: &TraceSettings, tick: &mut dyn FnMut()) -> Result<Vec<Trace>> {
    check(input, s)?;
    let noise = noise_of(input, runner.hidden(), s);
    trace_with_noise(runner, input, kinds, s, &noise, tick)
}

fn check(input: &TraceInput, s: &TraceSettings) -> Result<()> {
    let ([first, last], t) = (input.subject, input.ids.len());
    if first > last || last >= t {
        return Err(Error::Edit(format!("subject tokens {first}..={last} are outside the prompt's {t} tokens")));
    }
    if s.samples == 0 || s.max_batch == 0 || s.window == 0 || !s.noise.is_finite() {
        return Err(Error::Edit("causal tracing needs samples ≥ 1, a batch ≥ 1, a window ≥ 1 and a finite noise level".into()));
    }
    Ok(())
}

/// [`trace`] with the noise given: [sample][subject token][hidden] (another implementation's,
/// to compare with it).
pub fn trace_with_noise(runner: &dyn TraceRunner, input: &TraceInput, kinds: &[TraceKind], s: &TraceSettings, noise: &[Vec<Vec<f32>>], tick: &mut dyn FnMut()) -> Result<Vec<Trace>> {
    let (layers, d, t) = (runner.n_layers(), runner.hidden(), input.ids.len());
    check(input, s)?;
    let [first, last] = input.subject;
    let tokens = last - first + 1;
    if noise.len() != s.samples || noise.iter().any(|n| n.len() != tokens || n.iter().any(|v| v.len() != d)) {
        return Err(Error::Edit(format!("the noise is not {} samples × {tokens} subject tokens × {d}", s.samples)));
    }
    let noisy = |seq: usize, sample: usize| -> Vec<((usize, usize), Vec<f32>)> { noise[sample].iter().enumerate().map(|(j, v)| ((seq, first + j), v.clone())).collect() };
    let everywhere = |seq: usize| -> Vec<Site> { (0..layers).flat_map(|layer| (0..t).map(move |pos| Site { layer, seq, pos })).collect() };
    let wants_mlp = kinds.contains(&TraceKind::Mlp);
    let wants_hidden = kinds.contains(&TraceKind::Hidden);
    let wants_attn = kinds.contains(&TraceKind::Attn);

    // The clean run, and every state of it that may be put back.
    let all_if = |wanted: bool| if wanted { everywhere(0) } else { vec![] };
    let probes = Probes { residual: all_if(wants_hidden), down_in: all_if(wants_mlp), heads: all_if(wants_attn), ..Default::default() };
    let (p, clean) = runner.run(std::slice::from_ref(&input.ids), &probes, input.target)?;
    finite(&p, "the clean run")?;
    let clean_p = p[0];
    // The corrupted runs, and the same states of each (every residual where passes start
    // from them).
    let mut corrupted = Captured::default();
    let mut corrupted_p = vec![];
    for chunk in (0..s.samples).collect::<Vec<_>>().chunks(s.max_batch) {
        let seqs = vec![input.ids.clone(); chunk.len()];
        let mut probes = Probes::default();
        for (seq, &sample) in chunk.iter().enumerate() {
            probes.add_to_embedding.extend(noisy(seq, sample));
            if wants_hidden || s.skip_unchanged_layers {
                probes.residual.extend(everywhere(seq));
            }
        }
        let (p, cap) = runner.run(&seqs, &probes, input.target)?;
        finite(&p, "a corrupted run")?;
        corrupted_p.extend(p);
        corrupted.residual.extend(cap.residual);
    }
    let corrupted_mean = mean(&corrupted_p);
    let at = |sample: usize, layer: usize, pos: usize| (sample * layers + layer) * t + pos;
    // A corrupted run's residual stream after a layer, every token: where a pass that starts
    // at the next layer starts from.
    let corrupted_after = |sample: usize, layer: usize| -> Vec<f32> { (0..t).flat_map(|pos| corrupted.residual[at(sample, layer, pos)].iter().copied()).collect() };

    let mut out = vec![];
    for &kind in kinds {
        let mut restored = Vec::with_capacity(layers);
        for layer in 0..layers {
            let window = layer.saturating_sub(s.window / 2)..(layer + s.window - s.window / 2).min(layers);
            // Before the subject no state was corrupted (attention looks back only): putting
            // one back there gives the corrupted runs, which need no pass.
            let runs: Vec<(usize, usize)> = (first..t).flat_map(|pos| (0..s.samples).map(move |sample| (pos, sample))).collect();
            let mut p_of = vec![];
            // The first layer these runs change: the passes may start there.
            let start = match (s.skip_unchanged_layers, kind) {
                (false, _) => 0,
                (true, TraceKind::Hidden) => layer + 1,
                (true, _) => window.start,
            };
            for chunk in runs.chunks(s.max_batch) {
                let mut probes = Probes::default();
                if start > 0 {
                    probes.start_at = Some((start, chunk.iter().map(|&(_, sample)| corrupted_after(sample, start - 1)).collect()));
                }
                for (seq, &(pos, sample)) in chunk.iter().enumerate() {
                    if start == 0 {
                        probes.add_to_embedding.extend(noisy(seq, sample));
                    }
                    match kind {
                        // The clean state in the corrupted run's place, as the next layer
                        // reads it.
                        TraceKind::Hidden if start > 0 => {
                            let rows = &mut probes.start_at.as_mut().expect("set above").1[seq];
                            rows[pos * d..(pos + 1) * d].copy_from_slice(&clean.residual[layer * t + pos]);
                        }
                        // The clean state minus the corrupted one, added where it was.
                        TraceKind::Hidden => {
                            let (c, k) = (&clean.residual[layer * t + pos], &corrupted.residual[at(sample, layer, pos)]);
                            probes.add.push((Site { layer, seq, pos }, c.iter().zip(k).map(|(a, b)| a - b).collect()));
                        }
                        // The clean keys: each MLP of the window writes its clean output.
                        TraceKind::Mlp => probes.set_down_in.extend(window.clone().map(|l| (Site { layer: l, seq, pos }, clean.down_in[l * t + pos].clone()))),
                        // The clean heads' outputs: each attention of the window writes its
                        // clean output.
                        TraceKind::Attn => probes.set_heads.extend(window.clone().map(|l| (Site { layer: l, seq, pos }, clean.heads[l * t + pos].clone()))),
                    }
                }
                let (p, _) = runner.run(&vec![input.ids.clone(); chunk.len()], &probes, input.target)?;
                finite(&p, &format!("{kind:?} restored at layer {layer}"))?;
                p_of.extend(p);
            }
            let mut row = vec![corrupted_mean; first];
            row.extend(p_of.chunks(s.samples).map(mean));
            restored.push(row);
            tick();
        }
        out.push(Trace { kind, subject: input.subject, target: input.target, clean: clean_p, corrupted: corrupted_mean, restored });
    }
    Ok(out)
}

/// A probability that is not a number ends the trace: a mean with it would be one too.
fn finite(p: &[f64], what: &str) -> Result<()> {
    match p.iter().find(|p| !p.is_finite()) {
        Some(bad) => Err(Error::Edit(format!("{what}: P(answer) is {bad}"))),
        None => Ok(()),
    }
}

/// The layers an edit should rewrite, from the mean effect of restoring each layer's MLP
/// outputs at the subject's last token (ROME §2.1, MEMIT §4): the `count` consecutive layers
/// whose effects sum the largest (the earliest such run on a tie; all layers where the model
/// has no more). ROME's one layer is the peak.
pub fn choose_layers(effect: &[f64], count: usize) -> Vec<usize> {
    let count = count.max(1).min(effect.len());
    if count == 0 {
        return vec![];
    }
    let mut best = (0, f64::NEG_INFINITY);
    for (start, run) in effect.windows(count).enumerate() {
        let sum: f64 = run.iter().sum();
        if sum > best.1 {
            best = (start, sum);
        }
    }
    (best.0..best.0 + count).collect()
}

/// A prompt with `{}` where the subject goes, as a fact to trace toward `target` (a token):
/// its tokens and the subject's first and last token.
pub fn trace_input(tok: &crate::model::Tok, prompt: &str, subject: &str, target: u32) -> Result<TraceInput> {
    let sp = crate::edit::keys::subject_prompt(tok, "{}", prompt, subject)?;
    let before = &prompt[..prompt.find("{}").expect("subject_prompt checked it")];
    // The space before a word belongs to the word's token in byte-level BPE: the tokens of the
    // text before the subject, without that space, end where the subject's begin.
    let first = tok.encode_prompt(before.trim_end())?.len().clamp(tok.start().len(), sp.subject_last);
    Ok(TraceInput { ids: sp.ids, subject: [first, sp.subject_last], target })
}

/// The standard deviation of the values of some embedding rows (ROME's noise unit: the
/// subjects' token embeddings).
pub fn embedding_std(rows: &[Vec<f32>]) -> f64 {
    let values: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
    let m = mean(&values);
    (values.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / values.len().max(1) as f64).sqrt()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

impl TraceRunner for crate::model::forward::GpuModel {
    fn n_layers(&self) -> usize {
        self.config.n_layers
    }

    fn hidden(&self) -> usize {
        self.config.hidden
    }

    fn run(&self, seqs: &[Vec<u32>], probes: &Probes, target: u32) -> Result<(Vec<f64>, Captured)> {
        if target as usize >= self.config.vocab_size {
            return Err(Error::Edit(format!("the traced answer is token {target}, outside the vocabulary of {}", self.config.vocab_size)));
        }
        let batch = crate::model::batch::Batch::new(seqs)?;
        let rows = seqs.iter().enumerate().map(|(s, ids)| batch.row(s, ids.len() - 1)).collect();
        let (logits, cap) = self.forward(&batch, probes, crate::model::forward::LogitRows::Rows(rows), None)?;
        let logits = self.host_logits(&logits)?;
        Ok((logits.chunks(self.config.vocab_size).map(|row| crate::model::generate::log_softmax(row)[target as usize].exp()).collect(), cap))
    }
}
