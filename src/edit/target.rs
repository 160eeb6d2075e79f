//! The target value: the δ added to the residual stream after the edited layer, at the subject's
//! last token, that makes the model say target_new (DESIGN.md §3):
//! L(δ) = mean_c NLL(target_new | c + prompt) + kl·KL(p_orig ‖ p_δ on "{subject} is a")
//!        + wd·‖δ‖²/‖h‖², by Adam, with ‖δ‖ ≤ clamp·‖h‖ and an early stop on the NLL.
//! h is the MLP output being rewritten (at the plain prompt's subject token).
//! `TargetLoss::Published` gives ROME's, MEMIT's and EasyEdit's code instead: wd·‖δ‖/‖h‖², the
//! stop on the whole loss and KL(p_δ ‖ p_orig).

use super::hparams::RomeHparams;
use super::keys::{subject_prompt, SubjectPrompt};
use crate::error::{Error, Result};
use crate::linalg::subspace::HostComplement;
use crate::model::backward::{padded_targets, DeltaPass, Term};
use crate::model::batch::Batch;
use crate::model::forward::GpuModel;
use crate::model::Tok;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: usize,
    pub nll: f64,
    pub kl: f64,
    pub weight_decay: f64,
    /// Mean over contexts of exp(−mean NLL per target token).
    pub p_target: f64,
    pub delta_norm: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    #[serde(skip)]
    pub delta: Vec<f32>,
    pub h_norm: f64,
    pub history: Vec<Step>,
    pub stopped_early: bool,
}

/// Adam as in torch.optim.Adam (β = 0.9, 0.999; ε = 1e-8), on the host: δ has only d values.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    lr: f64,
}

impl Adam {
    fn new(n: usize, lr: f64) -> Self {
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0, lr }
    }
    fn step(&mut self, x: &mut [f32], g: &[f64]) {
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..x.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            x[i] -= (self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps)) as f32;
        }
    }
}

/// ‖x‖₂ in f64.
pub(crate) fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

/// The prompts of the optimisation: one per context template with the target appended (all
/// but its last token), then the KL prompt.
pub struct TargetBatch {
    pub prompts: Vec<SubjectPrompt>,
    pub target: Vec<u32>,
    /// Length of each rewriting prompt before the target.
    pub prompt_lens: Vec<usize>,
}

impl TargetBatch {
    /// The tokens of all its prompts.
    fn tokens(&self) -> usize {
        self.prompts.iter().map(|q| q.ids.len()).sum()
    }
}

pub fn target_batch(tok: &Tok, templates: &[String], prompt: &str, subject: &str, target_new: &str) -> Result<TargetBatch> {
    let target = tok.encode(target_new)?;
    if target.is_empty() {
        return Err(Error::Edit(format!("target_new {target_new:?} has no tokens")));
    }
    let mut prompts = vec![];
    let mut prompt_lens = vec![];
    for t in templates {
        let mut p = subject_prompt(tok, t, prompt, subject)?;
        prompt_lens.push(p.ids.len());
        p.ids.extend_from_slice(&target[..target.len() - 1]);
        prompts.push(p);
    }
    let kl = subject_prompt(tok, "{}", "{} is a", subject)?;
    // The KL term and δ's site are both at the subject's last token: " is a" would only be
    // computed and thrown away.
    prompts.push(SubjectPrompt { ids: kl.up_to_subject(), ..kl });
    Ok(TargetBatch { prompts, target, prompt_lens })
}

/// Which weight decay, early stop and KL direction the target's optimisation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetLoss {
    /// The design's: wd·‖δ‖²/‖h‖², stop once the NLL is below `nll_stop`.
    #[default]
    Design,
    /// The published code's (ROME `compute_v`, MEMIT and EasyEdit `compute_z`): wd·‖δ‖/‖h‖²,
    /// stop once NLL + KL + decay is below `nll_stop`, KL(p_δ ‖ p_orig).
    Published,
}

impl TargetLoss {
    /// The decay of δ (`x`, of norm ‖x‖ = `dn`) and its gradient's factor on x: the gradient
    /// is `factor`·x. At δ = 0 the linear form's gradient is 0, as torch's norm gives there.
    pub fn decay(self, weight_decay: f64, dn: f64, h_norm: f64) -> (f64, f64) {
        let hn2 = h_norm * h_norm;
        match self {
            TargetLoss::Design => (weight_decay * dn * dn / hn2, 2.0 * weight_decay / hn2),
            TargetLoss::Published if dn > 0.0 => (weight_decay * dn / hn2, weight_decay / (dn * hn2)),
            TargetLoss::Published => (0.0, 0.0),
        }
    }
}

/// The knobs of the target optimisation, shared by ROME and the MEMIT family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetParams {
    /// δ is added to the residual stream after this layer.
    pub layer: usize,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    pub nll_stop: f64,
    pub loss: TargetLoss,
}

impl From<&RomeHparams> for TargetParams {
    fn from(hp: &RomeHparams) -> Self {
        TargetParams {
            layer: hp.layer,
            steps: hp.v_steps,
            lr: hp.v_lr,
            weight_decay: hp.v_weight_decay,
            clamp_norm_factor: hp.clamp_norm_factor,
            kl_factor: hp.kl_factor,
            nll_stop: hp.nll_stop,
            loss: hp.target_loss,
        }
    }
}

/// Finds δ for one request at `hp.layer`; `h` is the MLP output it rewrites.
/// `reach`: as [`optimise_targets_within`].
pub fn optimise_target(model: &GpuModel, tb: &TargetBatch, h: &[f32], hp: &RomeHparams, reach: Option<&HostComplement>, mut on_step: impl FnMut(&Step)) -> Result<Target> {
    let mut t = optimise_targets_within(model, std::slice::from_ref(tb), &[h.to_vec()], &TargetParams::from(hp), reach, |_, s| on_step(s))?;
    Ok(t.remove(0))
}

/// Tokens of one batched pass of the target optimisation: the upper layers keep their
/// activations for the backward pass (about 5·(d + ffn) values a row and layer), so a large
/// batch of requests is cut into passes of about this many tokens (a pass runs its prompts in
/// groups of similar length, `DeltaPass`, so its rows are its tokens and a little padding).
pub const TARGET_PASS_ROWS: usize = 2048;

/// Finds each request's δ (`tbs[r]`, rewriting a vector of norm ‖`hs[r]`‖), several requests
/// per forward/backward pass: each has its own δ, Adam state, clamp and early stop (a request
/// that reached `nll_stop` keeps its δ while the others go on). `on_step(r, step)` sees each
/// request's steps.
pub fn optimise_targets(model: &GpuModel, tbs: &[TargetBatch], hs: &[Vec<f32>], p: &TargetParams, on_step: impl FnMut(usize, &Step)) -> Result<Vec<Target>> {
    optimise_targets_within(model, tbs, hs, p, None, on_step)
}

/// [`optimise_targets`] with every δ kept in `reach` when given (the complement of a REVIVE
/// guard's protected output directions, where the filtered update can put it): projected Adam,
/// each gradient projected before the step and each δ after it, so the loss only ever sees a δ
/// the guarded layer can write.
pub fn optimise_targets_within(model: &GpuModel, tbs: &[TargetBatch], hs: &[Vec<f32>], p: &TargetParams, reach: Option<&HostComplement>, mut on_step: impl FnMut(usize, &Step)) -> Result<Vec<Target>> {
    if let Some(c) = reach {
        if c.dim() != model.config.hidden {
            return Err(Error::shape("target", format!("targets of width {} kept in a subspace of width {}", model.config.hidden, c.dim())));
        }
    }
    if tbs.len() != hs.len() {
        return Err(Error::shape("target", format!("{} requests but {} rewritten vectors", tbs.len(), hs.len())));
    }
    let mut out = Vec::with_capacity(tbs.len());
    let mut start = 0;
    while start < tbs.len() {
        let mut end = start;
        let mut rows = 0;
        while end < tbs.len() {
            let tb = &tbs[end];
            let r = if padded_targets() { tb.prompts.len() * tb.prompts.iter().map(|q| q.ids.len()).max().unwrap_or(0) } else { tb.tokens() };
            if end > start && rows + r > TARGET_PASS_ROWS {
                break;
            }
            rows += r;
            end += 1;
        }
        out.extend(optimise_chunk(model, &tbs[start..end], &hs[start..end], p, reach, |r, s| on_step(start + r, s))?);
        start = end;
    }
    Ok(out)
}

/// One request's optimisation in progress.
struct Running {
    delta: Vec<f32>,
    adam: Adam,
    history: Vec<Step>,
    stopped: bool,
}

/// A pass over the requests still running and what its loss needs: the terms of those
/// requests in pass order (`spans[a]` the NLL terms of `active[a]`, then one KL term each).
struct ActivePass<'m> {
    pass: DeltaPass<'m>,
    prepared: crate::model::backward::PreparedTerms,
    active: Vec<usize>,
    spans: Vec<std::ops::Range<usize>>,
    first_kl: usize,
    /// The pass's rows, to tell when the stopped requests' share is worth a smaller pass.
    rows: usize,
}

/// The batched pass of `active` (indices into `tbs`), with each request's KL reference
/// (`p_refs[r]`: computed once, on the first pass, for every request) — or, where `p_refs` is
/// empty, with the references computed by this pass and returned.
fn active_pass<'m>(model: &'m GpuModel, tbs: &[TargetBatch], active: Vec<usize>, p: &TargetParams, p_refs: &mut Vec<Vec<f64>>) -> Result<ActivePass<'m>> {
    let d = model.config.hidden;
    let mut seqs = vec![];
    let mut sites = vec![];
    let mut first_seq = vec![];
    for (a, &r) in active.iter().enumerate() {
        let tb = &tbs[r];
        first_seq.push(seqs.len());
        for q in &tb.prompts {
            sites.push(((seqs.len(), q.subject_last), a));
            seqs.push(q.ids.clone());
        }
    }
    let batch = Batch::new(&seqs)?;
    let rows: usize = active.iter().map(|&r| tbs[r].tokens()).sum();
    let kl_rows: Vec<usize> = active.iter().enumerate().map(|(a, &r)| {
        let n_ctx = tbs[r].prompt_lens.len();
        batch.row(first_seq[a] + n_ctx, tbs[r].prompts[n_ctx].subject_last)
    }).collect();
    let pass = DeltaPass::with_deltas(model, batch, p.layer, &sites, active.len())?;
    if p_refs.is_empty() {
        *p_refs = pass.logprobs(&vec![0.0f32; active.len() * d], &kl_rows)?;
    }
    // Every request's NLL terms (`spans[a]` is where request active[a]'s sit), then one KL term
    // per request, in pass order after them (the published loss's KL terms must come last).
    let mut terms = vec![];
    let mut spans = vec![];
    for (a, &r) in active.iter().enumerate() {
        let tb = &tbs[r];
        let n_ctx = tb.prompt_lens.len();
        let per_token = 1.0 / (n_ctx * tb.target.len()) as f64;
        let from = terms.len();
        for (s, &len) in tb.prompt_lens.iter().enumerate() {
            for (j, &token) in tb.target.iter().enumerate() {
                terms.push(Term::Nll { row: pass.batch().row(first_seq[a] + s, len - 1 + j), token, weight: per_token });
            }
        }
        spans.push(from..terms.len());
    }
    let first_kl = terms.len();
    for (a, &r) in active.iter().enumerate() {
        let log_p = &p_refs[r];
        terms.push(match p.loss {
            TargetLoss::Design => Term::Kl { row: kl_rows[a], p_ref: log_p.iter().map(|&l| l.exp()).collect(), weight: p.kl_factor },
            TargetLoss::Published => Term::KlFrom { row: kl_rows[a], log_q: log_p.clone(), weight: p.kl_factor },
        });
    }
    let prepared = pass.prepare_terms(&terms)?;
    PASSES_BUILT.with(|n| n.set(n.get() + 1));
    Ok(ActivePass { pass, prepared, active, spans, first_kl, rows })
}

thread_local! {
    /// Target passes this thread has built (see [`active_pass`]); per thread, so that a test
    /// counts its own.
    static PASSES_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many batched target passes this thread has built: one per chunk of requests, and one
/// more each time a pass is rebuilt without the requests that stopped.
pub fn target_passes_built() -> usize {
    PASSES_BUILT.with(|n| n.get())
}

/// Whether a pass whose stopped requests hold `stopped` of its `rows` is worth building again
/// over the others with `steps_left` steps to go. Rebuilding runs the layers below the edited
/// one over them again (a prefix pass, well under one step's forward and backward), finds
/// their groups and binds new tensors, and on first use of a shape compiles its kernels; it
/// pays where the rows it drops add up to a whole step's worth and are a quarter of the pass.
/// Rows here are the requests' tokens, a proxy: a step runs each group's suffix past its
/// prefix, padded to the group's longest.
/// Measured on lavapipe (MEMIT, 20 requests, one context): 25 steps 128.4 → 88.8 s of targets;
/// 12 steps, where the first quarter stops only three steps before the end, no gain.
fn worth_rebuilding(stopped: usize, rows: usize, steps_left: usize) -> bool {
    let share = stopped as f64 / rows.max(1) as f64;
    share >= 0.25 && share * steps_left as f64 >= 1.0
}

fn optimise_chunk(model: &GpuModel, tbs: &[TargetBatch], hs: &[Vec<f32>], p: &TargetParams, reach: Option<&HostComplement>, mut on_step: impl FnMut(usize, &Step)) -> Result<Vec<Target>> {
    let d = model.config.hidden;
    let n = tbs.len();
    for (r, tb) in tbs.iter().enumerate() {
        if tb.prompt_lens.len() + 1 != tb.prompts.len() {
            return Err(Error::shape("target", format!("request {r}: {} prompts for {} contexts and the KL prompt", tb.prompts.len(), tb.prompt_lens.len())));
        }
    }
    let mut h_norms = vec![];
    for (r, h) in hs.iter().enumerate() {
        let h_norm = norm(h);
        if !(h_norm.is_finite() && h_norm > 0.0) {
            return Err(Error::Numeric(format!("request {r}: the rewritten vector has norm {h_norm}")));
        }
        h_norms.push(h_norm);
    }
    let mut runs: Vec<Running> = (0..n).map(|_| Running { delta: vec![0.0; d], adam: Adam::new(d, p.lr), history: vec![], stopped: false }).collect();
    let mut p_refs = vec![];
    let mut current = active_pass(model, tbs, (0..n).collect(), p, &mut p_refs)?;
    let mut delta = vec![0.0f32; n * d];
    for step in 0..p.steps {
        let lg = current.pass.loss_and_grad_with(&delta, &current.prepared)?;
        let cur = &current;
        if !lg.loss.is_finite() || lg.grad.iter().any(|g| !g.is_finite()) {
            let bad: Vec<usize> = (0..cur.active.len())
                .filter(|&a| lg.terms[cur.spans[a].clone()].iter().chain([&lg.terms[cur.first_kl + a]]).any(|t| !t.is_finite()) || lg.grad[a * d..(a + 1) * d].iter().any(|g| !g.is_finite()))
                .map(|a| cur.active[a])
                .collect();
            return Err(Error::Numeric(format!("the target loss or its gradient is not finite at step {step} (loss {}; requests {bad:?} of the pass)", lg.loss)));
        }
        let mut active = false;
        for (a, &r) in cur.active.iter().enumerate() {
            let run = &mut runs[r];
            if run.stopped {
                continue;
            }
            let tb = &tbs[r];
            let n_ctx = tb.prompt_lens.len();
            let parts = &lg.terms[cur.spans[a].clone()];
            let nll: f64 = parts.iter().sum();
            let kl = lg.terms[cur.first_kl + a];
            let x = &mut delta[a * d..(a + 1) * d];
            let dn = norm(x);
            let (wd, wd_factor) = p.loss.decay(p.weight_decay, dn, h_norms[r]);
            let p_target = (0..n_ctx).map(|c| (-parts[c * tb.target.len()..(c + 1) * tb.target.len()].iter().sum::<f64>() * n_ctx as f64).exp()).sum::<f64>() / n_ctx as f64;
            let rec = Step { step, nll, kl, weight_decay: wd, p_target, delta_norm: dn };
            on_step(r, &rec);
            run.history.push(rec);
            let stop_on = match p.loss {
                TargetLoss::Design => nll,
                TargetLoss::Published => nll + kl + wd,
            };
            if stop_on < p.nll_stop {
                run.stopped = true;
                continue;
            }
            if step + 1 == p.steps {
                continue;
            }
            active = true;
            let mut g: Vec<f64> = lg.grad[a * d..(a + 1) * d].iter().zip(x.iter()).map(|(&g, &x)| g as f64 + wd_factor * x as f64).collect();
            if let Some(c) = reach {
                c.project(&mut g);
            }
            run.adam.step(x, &g);
            // Adam scales each coordinate on its own, which moves δ out of the subspace.
            if let Some(c) = reach {
                c.project_f32(x);
            }
            let dn = norm(x);
            let max_norm = p.clamp_norm_factor * h_norms[r];
            if dn > max_norm {
                x.iter_mut().for_each(|v| *v = (*v as f64 * max_norm / dn) as f32);
            }
        }
        for (a, &r) in cur.active.iter().enumerate() {
            runs[r].delta.copy_from_slice(&delta[a * d..(a + 1) * d]);
        }
        if !active {
            break;
        }
        let stopped_rows: usize = cur.active.iter().filter(|&&r| runs[r].stopped).map(|&r| tbs[r].tokens()).sum();
        if worth_rebuilding(stopped_rows, cur.rows, p.steps - step - 1) {
            let still: Vec<usize> = cur.active.iter().copied().filter(|&r| !runs[r].stopped).collect();
            log::debug!("targets: after step {step}, a pass of {} of the {} requests ({stopped_rows} of {} rows stopped)", still.len(), cur.active.len(), cur.rows);
            // The old pass goes first: two at once would hold two chunks' activations.
            drop(current);
            current = active_pass(model, tbs, still, p, &mut p_refs)?;
            delta = current.active.iter().flat_map(|&r| runs[r].delta.iter().copied()).collect();
        }
    }
    Ok(runs
        .into_iter()
        .zip(h_norms)
        .map(|(run, h_norm)| Target { delta: run.delta, h_norm, history: run.history, stopped_early: run.stopped })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{worth_rebuilding, TargetLoss};

    /// Each decay's gradient factor against central differences of its value, in f64.
    #[test]
    fn decay_gradients_match_finite_differences() {
        let x = [3.0f64, -1.5, 0.25, 2.0, -0.75];
        let h_norm = 7.0;
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        for loss in [TargetLoss::Design, TargetLoss::Published] {
            let (value, factor) = loss.decay(0.5, norm(&x), h_norm);
            let want = match loss {
                TargetLoss::Design => 0.5 * norm(&x).powi(2) / 49.0,
                TargetLoss::Published => 0.5 * norm(&x) / 49.0,
            };
            assert!((value - want).abs() < 1e-15, "{loss:?}: {value} vs {want}");
            for i in 0..x.len() {
                let step = 1e-6;
                let mut up = x;
                let mut down = x;
                up[i] += step;
                down[i] -= step;
                let numeric = (loss.decay(0.5, norm(&up), h_norm).0 - loss.decay(0.5, norm(&down), h_norm).0) / (2.0 * step);
                assert!((numeric - factor * x[i]).abs() < 1e-8, "{loss:?} component {i}: {numeric} vs {}", factor * x[i]);
            }
        }
        assert_eq!(TargetLoss::Published.decay(0.5, 0.0, h_norm), (0.0, 0.0));
    }

    /// A quarter of the rows and a whole step's worth of them, both.
    #[test]
    fn a_pass_is_rebuilt_where_the_dropped_rows_add_up_to_a_step() {
        assert!(!worth_rebuilding(20, 100, 100));
        assert!(!worth_rebuilding(30, 100, 3));
        assert!(worth_rebuilding(25, 100, 4));
        assert!(worth_rebuilding(50, 100, 2));
        assert!(!worth_rebuilding(0, 0, 10));
    }
}
