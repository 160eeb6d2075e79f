//! The target value: the δ added to the residual stream after the edited layer, at the subject's
//! last token, that makes the model say target_new (DESIGN.md §3):
//! L(δ) = mean_c NLL(target_new | c + prompt) + kl·KL(p_orig ‖ p_δ on "{subject} is a")
//!        + wd·‖δ‖²/‖h‖², by Adam, with ‖δ‖ ≤ clamp·‖h‖ and an early stop on the NLL.
//! h is the MLP output being rewritten (at the plain prompt's subject token).

use super::hparams::RomeHparams;
use super::keys::{subject_prompt, SubjectPrompt};
use crate::error::{Error, Result};
use crate::model::backward::{DeltaPass, Term};
use crate::model::forward::Batch;
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
    prompts.push(subject_prompt(tok, "{}", "{} is a", subject)?);
    Ok(TargetBatch { prompts, target, prompt_lens })
}

/// Finds δ for one request at `hp.layer`; `h` is the MLP output it rewrites.
pub fn optimise_target(model: &GpuModel, tb: &TargetBatch, h: &[f32], hp: &RomeHparams, mut on_step: impl FnMut(&Step)) -> Result<Target> {
    let d = model.config.hidden;
    let n_ctx = tb.prompt_lens.len();
    let batch = Batch::new(&tb.prompts.iter().map(|p| p.ids.clone()).collect::<Vec<_>>())?;
    let sites: Vec<(usize, usize)> = tb.prompts.iter().enumerate().map(|(s, p)| (s, p.subject_last)).collect();
    let kl_row = batch.row(n_ctx, tb.prompts[n_ctx].subject_last);
    let pass = DeltaPass::new(model, batch, hp.layer, &sites)?;

    let mut delta = vec![0.0f32; d];
    let p_ref: Vec<f64> = pass.logprobs(&delta, &[kl_row])?.remove(0).into_iter().map(f64::exp).collect();
    let per_token = 1.0 / (n_ctx * tb.target.len()) as f64;
    let mut terms = vec![];
    for (s, &len) in tb.prompt_lens.iter().enumerate() {
        for (j, &token) in tb.target.iter().enumerate() {
            terms.push(Term::Nll { row: pass.batch().row(s, len - 1 + j), token, weight: per_token });
        }
    }
    let n_nll = terms.len();
    terms.push(Term::Kl { row: kl_row, p_ref, weight: hp.kl_factor });

    let h_norm = norm(h);
    if !(h_norm.is_finite() && h_norm > 0.0) {
        return Err(Error::Numeric(format!("the rewritten MLP output has norm {h_norm}")));
    }
    let max_norm = hp.clamp_norm_factor * h_norm;
    let mut adam = Adam::new(d, hp.v_lr);
    let mut history = vec![];
    let mut stopped_early = false;
    for step in 0..hp.v_steps {
        let lg = pass.loss_and_grad(&delta, &terms)?;
        let nll: f64 = lg.terms[..n_nll].iter().sum();
        let dn = norm(&delta);
        let wd = hp.v_weight_decay * dn * dn / (h_norm * h_norm);
        let p_target = (0..n_ctx).map(|c| (-lg.terms[c * tb.target.len()..(c + 1) * tb.target.len()].iter().sum::<f64>() * n_ctx as f64).exp()).sum::<f64>() / n_ctx as f64;
        let rec = Step { step, nll, kl: lg.terms[n_nll], weight_decay: wd, p_target, delta_norm: dn };
        on_step(&rec);
        history.push(rec);
        if !lg.loss.is_finite() || lg.grad.iter().any(|g| !g.is_finite()) {
            return Err(Error::Numeric(format!("the target loss or its gradient is not finite at step {step} (loss {})", lg.loss)));
        }
        if nll < hp.nll_stop {
            stopped_early = true;
            break;
        }
        if step + 1 == hp.v_steps {
            break;
        }
        let g: Vec<f64> = lg.grad.iter().zip(&delta).map(|(&g, &x)| g as f64 + 2.0 * hp.v_weight_decay * x as f64 / (h_norm * h_norm)).collect();
        adam.step(&mut delta, &g);
        let dn = norm(&delta);
        if dn > max_norm {
            delta.iter_mut().for_each(|x| *x = (*x as f64 * max_norm / dn) as f32);
        }
    }
    Ok(Target { delta, h_norm, history, stopped_early })
}
