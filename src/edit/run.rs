//! A sequential ROME run: requests applied one after another to the same model, each measured
//! before and after, everything recorded.

use super::hparams::RomeHparams;
use super::request::EditRequest;
use super::rome::{apply_update, rome_update, templates, CovSolver, RomeReport};
use crate::error::Result;
use crate::eval::spectrum::Diagnostics;
use crate::edit::guard::{FilterReport, SpectralGuard};
use crate::eval::counterfact::{fact_metrics, facts_metrics_against, FactMetrics};
use crate::model::forward::GpuModel;
use crate::model::Tok;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct EditRecord {
    pub index: usize,
    pub request: EditRequest,
    pub before: FactMetrics,
    pub after: FactMetrics,
    pub rome: RomeReport,
    /// Wall time of the edit itself (keys, target, update, filter), without the metrics.
    pub edit_seconds: f64,
    /// What the REVIVE filter removed, when the run has a guard.
    pub filter: Option<FilterReport>,
    /// The state of the model after this edit, when the run tracks it.
    pub tracking: Option<Tracking>,
}

/// Measured after an edit: the spectrum of the edited matrix against the original and the
/// unrelated facts the model still answers.
#[derive(Debug, Clone, Serialize)]
pub struct Tracking {
    pub diagnostics: Option<Diagnostics>,
    pub known_correct: usize,
    pub known_total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub method: &'static str,
    pub model: String,
    pub adapter: String,
    pub hparams: RomeHparams,
    /// The REVIVE guard every update went through, if any.
    pub revive: Option<crate::edit::guard::GuardInfo>,
    pub covariance_tokens: usize,
    pub covariance_seconds: f64,
    pub templates: Vec<String>,
    pub edits: Vec<EditRecord>,
    pub total_seconds: f64,
}

/// A ROME run's REVIVE guard, and whether its targets are optimised through it
/// (`rome_update_ids`).
#[derive(Clone, Copy)]
pub struct Guarding<'a> {
    pub guard: &'a SpectralGuard,
    pub targets_through: bool,
}

/// Applies `requests` in order with ROME. `cov` is C0 of `hp.layer` of the original model;
/// with a guard (built from the original weight of that layer), every update goes through
/// the REVIVE filter before it is written. `track` may measure the model after each edit;
/// `on_edit` sees each record as it completes (to print it).
#[allow(clippy::too_many_arguments)]
pub fn run_rome(
    model: &GpuModel,
    tok: &Tok,
    requests: &[EditRequest],
    hp: &RomeHparams,
    cov: &CovSolver,
    guarding: Option<Guarding>,
    progress: bool,
    mut track: impl FnMut(&GpuModel) -> Result<Option<Tracking>>,
    mut on_edit: impl FnMut(&EditRecord),
) -> Result<(Vec<String>, Vec<EditRecord>)> {
    let guard = guarding.map(|g| g.guard);
    if let Some(g) = guard {
        if g.info.matrix != crate::model::names::down_name(hp.layer) {
            return Err(crate::error::Error::Edit(format!("the REVIVE guard is for {}, the edit writes {}", g.info.matrix, crate::model::names::down_name(hp.layer))));
        }
    }
    let reach = guarding.filter(|g| g.targets_through).map(|g| g.guard.reach(model.gpu())).transpose()?;
    let bar = crate::progress::edits(requests.len() as u64, progress);
    bar.set_message("sampling context templates");
    let templates = templates(model, tok, hp)?;
    let mut records = vec![];
    for (index, req) in requests.iter().enumerate() {
        bar.set_message(format!("{} → {:?}", req.full_prompt(), req.target_new));
        let before = fact_metrics(model, tok, req)?;
        let start = Instant::now();
        let (dw, rome) = rome_update(model, tok, req, hp, &templates, cov, reach.as_ref(), |s| {
            bar.set_message(format!("{:?}: step {} nll {:.3} p {:.3}", req.target_new, s.step, s.nll, s.p_target));
            bar.tick();
        })?;
        let (dw, filter) = match guard {
            Some(g) => {
                let (safe, report) = g.filter_delta(model.gpu(), &dw)?;
                (safe, Some(report))
            }
            None => (dw, None),
        };
        apply_update(model, hp.layer, &dw)?;
        model.gpu().sync()?;
        let edit_seconds = start.elapsed().as_secs_f64();
        let after = facts_metrics_against(model, tok, std::slice::from_ref(req), Some(std::slice::from_ref(&before.locality_top)))?.remove(0);
        bar.set_message("measuring the edited model");
        let tracking = track(model)?;
        let rec = EditRecord { index, request: req.clone(), before, after, rome, edit_seconds, filter, tracking };
        bar.suspend(|| on_edit(&rec));
        records.push(rec);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((templates, records))
}
