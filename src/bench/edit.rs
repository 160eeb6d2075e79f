//! `revive bench edit`: time per ROME edit, applied one after another, with what the edits did:
//! efficacy right after each edit and after all of them, paraphrases, and the retention of
//! known facts that were not edited. The baseline in the same run is one forward pass of the
//! edit's own prompt on the same adapter, so the time of an edit reads as a number of passes.

use crate::edit::hparams::RomeHparams;
use crate::edit::request::EditRequest;
use crate::edit::rome::CovSolver;
use crate::edit::run::{run_rome, EditRecord, Guarding, Tracking};
use crate::eval::spectrum::diagnose;
use crate::edit::guard::GuardInfo;
use crate::linalg::subspace::Basis;
use crate::linalg::svd::SvdOptions;
use crate::gpu::Tensor;
use crate::error::Result;
use crate::eval::counterfact::{cf_scores, facts_metrics_against, locality_tops, CfScores};
use crate::eval::retention::{check_facts, Fact, FactCheck};
use crate::model::forward::GpuModel;
use crate::model::names::down_name;
use crate::model::Tok;
use serde::Serialize;
use std::time::Instant;

/// What to measure after every edit: the edited matrix's spectrum against the original
/// (`w0`, its top-k `basis`) and the known facts.
pub struct Track<'a> {
    pub w0: Tensor,
    pub basis: &'a Basis,
    pub opts: SvdOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct EditBench {
    /// "rome" or "rome+revive".
    pub arm: String,
    /// The guard the updates went through, if any.
    pub revive: Option<GuardInfo>,
    pub edits: usize,
    pub seconds_per_edit_mean: f64,
    pub seconds_per_edit_median: f64,
    /// One forward pass of a rewrite prompt, the same-run baseline.
    pub forward_seconds: f64,
    pub efficacy_after_each: usize,
    pub efficacy_at_end: usize,
    pub paraphrase_mean_at_end: Option<f64>,
    /// After all edits: CounterFact's scores and EasyEdit's, its locality against the unedited
    /// model (as EasyEdit's sequential editing measures it).
    pub scores_at_end: CfScores,
    pub known_before: usize,
    pub known_after: usize,
    pub known_lost: Vec<FactCheck>,
    pub records: Vec<EditRecord>,
}

#[allow(clippy::too_many_arguments)]
/// The median of three forward passes of `prompt`: the baseline an edit's time is read against.
pub fn forward_pass_seconds(model: &GpuModel, tok: &Tok, prompt: &str) -> Result<f64> {
    let ids = tok.encode_prompt(prompt)?;
    let mut passes = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        model.last_logits(std::slice::from_ref(&ids))?;
        passes.push(t.elapsed().as_secs_f64());
    }
    passes.sort_by(f64::total_cmp);
    Ok(passes[1])
}

pub fn run(
    model: &GpuModel,
    tok: &Tok,
    requests: &[EditRequest],
    known: &[Fact],
    hp: &RomeHparams,
    cov: &CovSolver,
    guarding: Option<Guarding>,
    track: Option<&Track>,
    mut on_edit: impl FnMut(&EditRecord),
) -> Result<EditBench> {
    let forward_seconds = forward_pass_seconds(model, tok, &requests[0].full_prompt())?;
    let known_before = check_facts(model, tok, known)?;
    let unedited = locality_tops(model, tok, requests)?;
    let name = down_name(hp.layer);
    let measure = |m: &GpuModel| -> Result<Option<Tracking>> {
        let Some(t) = track else { return Ok(None) };
        let diagnostics = Some(diagnose(m.gpu(), &name, m.tensor(&name)?, &t.w0, t.basis, &t.opts)?);
        let checks = check_facts(m, tok, known)?;
        Ok(Some(Tracking { diagnostics, known_correct: checks.iter().filter(|c| c.correct).count(), known_total: known.len() }))
    };
    let (_, records) = run_rome(model, tok, requests, hp, cov, guarding, true, measure, |r| on_edit(r))?;
    let known_after = check_facts(model, tok, known)?;
    let at_end = facts_metrics_against(model, tok, requests, Some(&unedited))?;
    let mut times: Vec<f64> = records.iter().map(|r| r.edit_seconds).collect();
    times.sort_by(f64::total_cmp);
    let paraphrases: Vec<f64> = at_end.iter().filter_map(|m| m.paraphrase).collect();
    Ok(EditBench {
        arm: match guarding {
            Some(Guarding { targets_through: true, .. }) => "rome+revive+through",
            Some(_) => "rome+revive",
            None => "rome",
        }
        .to_string(),
        revive: guarding.map(|g| g.guard.info.clone()),
        edits: records.len(),
        seconds_per_edit_mean: times.iter().sum::<f64>() / times.len() as f64,
        seconds_per_edit_median: times[times.len() / 2],
        forward_seconds,
        efficacy_after_each: records.iter().filter(|r| r.after.efficacy == Some(true)).count(),
        efficacy_at_end: at_end.iter().filter(|m| m.efficacy == Some(true)).count(),
        paraphrase_mean_at_end: (!paraphrases.is_empty()).then(|| paraphrases.iter().sum::<f64>() / paraphrases.len() as f64),
        scores_at_end: cf_scores(&at_end),
        known_before: known_before.iter().filter(|c| c.correct).count(),
        known_after: known_after.iter().filter(|c| c.correct).count(),
        known_lost: known_before.iter().zip(&known_after).filter(|(b, a)| b.correct && !a.correct).map(|(_, a)| a.clone()).collect(),
        records,
    })
}
