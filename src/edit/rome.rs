//! ROME (Meng et al. 2022): one fact, one layer, a rank-one update of the MLP down-projection
//! W (d × ffn) so that the subject's key maps to the target value:
//! ΔW = δ uᵀ / (uᵀ k_p), u = C0⁻¹ k*,
//! where k* is the subject key averaged over the context templates, δ = v* − W k_p the target
//! found by optimise_target, and k_p the key of the plain prompt. With k_p in the denominator,
//! as in ROME's reference code, the edited layer returns exactly v* at the prompt itself
//! (DESIGN.md writes k* there; the two agree when the only template is "{}").

use super::hparams::RomeHparams;
use super::keys::{context_templates, mean_key, subject_keys, subject_prompt, SubjectPrompt};
use super::request::EditRequest;
use super::guard::Reach;
use super::target::{norm, optimise_target, target_batch, Step, Target, TargetBatch};
use crate::error::{Error, Result};
use crate::model::forward::GpuModel;
use crate::model::names::{down_bias_name, down_name};
use crate::model::Tok;
use super::method::{Method, MethodRecord, Writer};
use super::update::{Delta, Update};
use crate::ops::reduce::frobenius;
use faer::prelude::*;
use faer::{Mat, Side};
use serde::Serialize;

/// C0 of one layer, factorised once and reused by every edit of that layer.
pub struct CovSolver {
    pub layer: usize,
    pub tokens: usize,
    llt: faer::linalg::solvers::Llt<f64>,
    dim: usize,
}

impl CovSolver {
    /// `c0`: row-major dim × dim, symmetric positive definite.
    pub fn new(layer: usize, tokens: usize, c0: &[f32], dim: usize) -> Result<Self> {
        if c0.len() != dim * dim {
            return Err(Error::shape("rome", format!("C0 has {} values, expected {dim}²", c0.len())));
        }
        if let Some(i) = c0.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!("C0 of layer {layer} has a non-finite entry at {i}")));
        }
        let m = Mat::<f64>::from_fn(dim, dim, |i, j| 0.5 * (c0[i * dim + j] as f64 + c0[j * dim + i] as f64));
        let llt = m.llt(Side::Lower).map_err(|e| Error::Numeric(format!("C0 of layer {layer} is not positive definite ({e:?}); use more covariance tokens")))?;
        Ok(CovSolver { layer, tokens, llt, dim })
    }

    /// C0⁻¹ K for the columns of K (dim × n), in f64.
    pub fn solve_mat(&self, k: &Mat<f64>) -> Result<Mat<f64>> {
        if k.nrows() != self.dim {
            return Err(Error::shape("covariance solve", format!("keys of width {}, C0 of {}", k.nrows(), self.dim)));
        }
        Ok(self.llt.solve(k))
    }

    /// C0⁻¹ k.
    pub fn solve(&self, k: &[f32]) -> Vec<f64> {
        let rhs = Mat::<f64>::from_fn(self.dim, 1, |i, _| k[i] as f64);
        let x = self.llt.solve(&rhs);
        (0..self.dim).map(|i| x[(i, 0)]).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RomeReport {
    pub layer: usize,
    pub templates: Vec<String>,
    pub target: Target,
    /// ‖ΔW‖_F.
    pub update_norm: f64,
    /// ‖W‖_F before the edit.
    pub weight_norm: f64,
    /// uᵀ k_p / ‖u‖ — how well the key stands out from the covariance.
    pub key_alignment: f64,
    /// With the target optimised through a REVIVE guard: uᵀ(I − V_kV_kᵀ)k_p / uᵀk_p, the share
    /// of the update's effect at the prompt that the filter's right side lets through (the
    /// update is scaled by its inverse, so the filtered update still returns v*).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_reach: Option<f64>,
}

/// Computes ROME's ΔW for one request without writing it: δ/(uᵀk_p) · uᵀ, as its two factors
/// (d×1 and ffn×1).
pub fn rome_update(
    model: &GpuModel,
    tok: &Tok,
    req: &EditRequest,
    hp: &RomeHparams,
    templates: &[String],
    cov: &CovSolver,
    reach: Option<&Reach>,
    on_step: impl FnMut(&Step),
) -> Result<(Delta, RomeReport)> {
    let prompts = templates.iter().map(|t| subject_prompt(tok, t, &req.prompt, &req.subject)).collect::<Result<Vec<_>>>()?;
    let plain = subject_prompt(tok, "{}", &req.prompt, &req.subject)?;
    let tb = target_batch(tok, templates, &req.prompt, &req.subject, &req.target_new)?;
    let (dw, mut report) = rome_update_ids(model, &prompts, &plain, &tb, hp, cov, reach, on_step)?;
    report.templates = templates.to_vec();
    Ok((dw, report))
}

/// ROME on token ids: `prompts` are the context prompts for k*, `plain` the bare prompt, `tb`
/// the batch the target is optimised on. With `reach` (the layer's REVIVE guard, targets
/// through it), δ stays where the filtered update can write it and the denominator is
/// uᵀ(I − V_kV_kᵀ)k_p: after the filter, the update still maps k_p to exactly v*.
#[allow(clippy::too_many_arguments)]
pub fn rome_update_ids(
    model: &GpuModel,
    prompts: &[SubjectPrompt],
    plain: &SubjectPrompt,
    tb: &TargetBatch,
    hp: &RomeHparams,
    cov: &CovSolver,
    reach: Option<&Reach>,
    on_step: impl FnMut(&Step),
) -> Result<(Delta, RomeReport)> {
    let gpu = model.gpu();
    let c = &model.config;
    let layer = hp.layer;
    if layer >= c.n_layers || cov.layer != layer {
        return Err(Error::Edit(format!("layer {layer} (model has {}, covariance is of layer {})", c.n_layers, cov.layer)));
    }
    let k_star = mean_key(&subject_keys(model, prompts, layer)?);
    let plain = subject_keys(model, std::slice::from_ref(plain), layer)?.remove(0);

    // h = W k_p (+ b): the MLP output δ is measured against.
    let w = model.tensor(&down_name(layer))?;
    let kp = gpu.upload(&plain, &[1, plain.len()])?;
    let bias = model.tensor(&down_bias_name(layer)).ok();
    let h = gpu.download(&model.linear(&kp, w, bias)?)?;
    let target = optimise_target(model, tb, &h, hp, reach.map(|r| &r.left), on_step)?;

    let u = cov.solve(&k_star);
    let dot = |k: &[f32]| -> f64 { u.iter().zip(k).map(|(a, &b)| a * b as f64).sum() };
    let plain_denom = dot(&plain);
    let (denom, key_reach) = match reach {
        None => (plain_denom, None),
        Some(r) => {
            let mut free = plain.clone();
            r.right.project_f32(&mut free);
            let d = dot(&free);
            (d, Some(d / plain_denom))
        }
    };
    let u_norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !(denom.is_finite() && denom.abs() > 1e-12 * u_norm * norm(&plain)) {
        let why = if reach.is_some() { " (with the key's part in the guard's protected input directions removed)" } else { "" };
        return Err(Error::Numeric(format!("ROME's denominator uᵀk = {denom:e}{why} is zero or not finite")));
    }
    let left: Vec<f32> = target.delta.iter().map(|&x| (x as f64 / denom) as f32).collect();
    let right: Vec<f32> = u.iter().map(|&x| x as f32).collect();
    let dw = Delta::LowRank { left: gpu.upload(&left, &[left.len(), 1])?, right: gpu.upload(&right, &[right.len(), 1])? };
    let update_norm = dw.norm(gpu)?;
    let weight_norm = frobenius(gpu, w)?;
    let report = RomeReport { layer, templates: vec![], target, update_norm, weight_norm, key_alignment: plain_denom / u_norm, key_reach };
    Ok((dw, report))
}

/// W ← W + ΔW for the down-projection of `layer`, refusing an update that is not finite.
pub fn apply_update(model: &GpuModel, layer: usize, dw: &Delta) -> Result<()> {
    let n = dw.norm(model.gpu())?;
    if !n.is_finite() {
        return Err(Error::Numeric(format!("the update of layer {layer} is not finite (‖ΔW‖ = {n}); the weights were left unchanged")));
    }
    dw.add_to(model.gpu(), model.tensor(&down_name(layer))?)
}

/// Context templates for a run (sampled once, shared by its edits).
pub fn templates(model: &GpuModel, tok: &Tok, hp: &RomeHparams) -> Result<Vec<String>> {
    context_templates(model, tok, &hp.templates)
}

/// ROME behind the method interface: each request of a batch is one rank-one edit, written
/// before the next request is computed (as a sequence of single edits).
pub struct RomeMethod<'t> {
    hp: RomeHparams,
    templates: Vec<String>,
    cov: CovSolver,
    tok: &'t Tok,
}

impl<'t> RomeMethod<'t> {
    pub fn new(hp: RomeHparams, templates: Vec<String>, cov: CovSolver, tok: &'t Tok) -> Self {
        RomeMethod { hp, templates, cov, tok }
    }
}

impl Method for RomeMethod<'_> {
    fn name(&self) -> &'static str {
        "rome"
    }

    fn matrices(&self) -> Vec<String> {
        vec![down_name(self.hp.layer)]
    }

    fn edit(&mut self, writer: &mut Writer, requests: &[EditRequest], progress: &mut dyn FnMut(&str)) -> Result<MethodRecord> {
        let mut reports = vec![];
        let reach = writer.reach(&down_name(self.hp.layer))?;
        for (i, req) in requests.iter().enumerate() {
            let (dw, report) = rome_update(writer.model(), self.tok, req, &self.hp, &self.templates, &self.cov, reach.as_ref(), |s| progress(&format!("request {i}: step {} nll {:.3}", s.step, s.nll)))
                .map_err(|e| Error::Edit(format!("request {i} ({:?}): {e}", req.full_prompt())))?;
            writer.write(Update { matrix: down_name(self.hp.layer), delta: dw })?;
            let last = report.target.history.last();
            reports.push(serde_json::json!({
                "steps": report.target.history.len(),
                "nll": last.map(|s| s.nll),
                "delta_norm": last.map(|s| s.delta_norm),
                "h_norm": report.target.h_norm,
                "update_norm": report.update_norm,
                "key_alignment": report.key_alignment,
                "key_reach": report.key_reach,
            }));
        }
        Ok(MethodRecord { record: serde_json::json!({ "requests": reports }), state: vec![] })
    }

    fn observe(&mut self, _: &crate::gpu::Gpu, _: &[Update], _: &[(String, crate::model::weights::HostTensor)]) -> Result<()> {
        Ok(())
    }
}
