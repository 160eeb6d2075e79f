//! One interface for every editing method. A method turns a batch of requests into updates of
//! named matrices and writes them through a [`Writer`] — the only way it has to change the
//! weights — which runs every update through the REVIVE guard of its matrix (when the session
//! has guards: a matrix without one is refused, so no method can skip the filter), checks it is
//! finite and not exploding, and adds it to the weights. Writing as it goes lets MEMIT's later
//! layers see the filtered update of the earlier ones.
//!
//! Methods with state between batches (AlphaEdit's running K_pK_pᵀ, PRUNE's accumulated ΔW)
//! rebuild it only from what [`Method::observe`] tells them: the updates as written and the
//! state tensors the method put in its record. The session calls it after each batch and when it
//! replays a journal, so a resumed session has the same state as one that never stopped.

use super::guard::{FilterReport, Reach, SpectralGuard};
use super::request::EditRequest;
use super::update::{check_update, Update};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::forward::GpuModel;
use crate::model::weights::HostTensor;
use std::collections::BTreeMap;

/// What a method reports about one batch: a JSON record (method-specific: targets, null-space
/// dimensions, …) and named tensors it needs to rebuild its state on replay.
#[derive(Default)]
pub struct MethodRecord {
    pub record: serde_json::Value,
    pub state: StateTensors,
}

/// Named tensors a method keeps in its batch records to rebuild its state.
pub type StateTensors = Vec<(String, HostTensor)>;

pub trait Method {
    fn name(&self) -> &'static str;
    /// Every matrix the method may write (the session builds a guard for each).
    fn matrices(&self) -> Vec<String>;
    /// Edits one batch, writing through `writer`.
    fn edit(&mut self, writer: &mut Writer, requests: &[EditRequest], progress: &mut dyn FnMut(&str)) -> Result<MethodRecord>;
    /// What a batch wrote, live or replayed from the journal.
    fn observe(&mut self, gpu: &Gpu, written: &[Update], state: &[(String, HostTensor)]) -> Result<()>;
}

/// One update as it reached the weights.
#[derive(Clone)]
pub struct Written {
    pub update: Update,
    /// ‖ΔW‖_F as the method proposed it and as written.
    pub proposed_norm: f64,
    pub norm: f64,
    pub filter: Option<FilterReport>,
}

/// The methods' only way to change the weights; see the module comment.
pub struct Writer<'a> {
    model: &'a GpuModel,
    guards: &'a BTreeMap<String, SpectralGuard>,
    max_ratio: f64,
    targets_through_guard: bool,
    written: Vec<Written>,
}

impl<'a> Writer<'a> {
    /// `guards` empty: no REVIVE; otherwise every written matrix must have one.
    pub fn new(model: &'a GpuModel, guards: &'a BTreeMap<String, SpectralGuard>, max_ratio: f64) -> Self {
        Writer { model, guards, max_ratio, targets_through_guard: false, written: vec![] }
    }

    /// Methods optimise their targets through the guards ([`Writer::reach`]).
    pub fn with_targets_through_guard(mut self, on: bool) -> Self {
        self.targets_through_guard = on;
        self
    }

    /// Where the filtered update of `matrix` can reach, when the session optimises targets
    /// through the guard; None without REVIVE or without that setting.
    pub fn reach(&self, matrix: &str) -> Result<Option<Reach>> {
        if !self.targets_through_guard || self.guards.is_empty() {
            return Ok(None);
        }
        let g = self.guards.get(matrix).ok_or_else(|| Error::Edit(format!("REVIVE is on but {matrix} has no guard; the session builds one for every matrix the method names")))?;
        Ok(Some(g.reach(self.model.gpu())?))
    }

    /// The model as written so far (read-only: writes go through [`Writer::write`]).
    pub fn model(&self) -> &GpuModel {
        self.model
    }

    /// Filters, checks and writes one update; returns it as written.
    pub fn write(&mut self, update: Update) -> Result<&Written> {
        let gpu = self.model.gpu();
        let w = self.model.tensor(&update.matrix)?;
        // The proposal must be finite; its size is judged as written, after the guard: a
        // proposal REVIVE shrinks below the bound is what the guard is for, not an explosion.
        let proposed_norm = check_update(gpu, &update, w, f64::INFINITY)?;
        let (update, filter) = if self.guards.is_empty() {
            (update, None)
        } else {
            let g = self.guards.get(&update.matrix).ok_or_else(|| Error::Edit(format!("REVIVE is on but {} has no guard; the session builds one for every matrix the method names", update.matrix)))?;
            let (delta, report) = g.filter_delta(gpu, &update.delta)?;
            (Update { matrix: update.matrix, delta }, Some(report))
        };
        let norm = check_update(gpu, &update, w, self.max_ratio)?;
        update.delta.add_to(gpu, w)?;
        self.written.push(Written { update, proposed_norm, norm, filter });
        Ok(self.written.last().expect("just pushed"))
    }

    pub fn written(&self) -> &[Written] {
        &self.written
    }

    pub fn into_written(self) -> Vec<Written> {
        self.written
    }
}
