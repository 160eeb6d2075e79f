//! MEMIT (Meng et al. 2023) and the methods built on its multi-layer update: AlphaEdit, RECT
//! and PRUNE differ only in how one layer's update is solved or shaped, NSE also in where its
//! targets come from and in repeating the loop (DESIGN.md §3, written
//! out in docs/architecture.md).
//!
//! For a batch of n requests, edited layers l₁ < … < l_L:
//! 1. the targets z*_r = h_r + δ_r at the residual stream after l_L, all δ_r optimised together
//!    (one batched forward/backward per Adam step, [`optimise_targets_within`]; with targets
//!    through the guard, each δ_r kept out of l_L's protected output directions);
//! 2. for each layer l_i in ascending order, with the weights as written so far: the keys K
//!    (m×n, each the mean over the context templates of the subject's last-token key), the
//!    current residual z_r at l_L, R = (z* − z)/(L − i); the [`Solver`] gives the right factor X
//!    of ΔW = R Xᵀ (MEMIT: X = (λC0 + KKᵀ)⁻¹K); an optional [`Shaper`] rewrites it (RECT's
//!    sparsity, PRUNE's singular-value restraint); the writer filters and writes it.
//!
//! Keys, residuals, targets and the writes run on the GPU; the m×m solves run on the host in
//! f64 (as MEMIT's reference solves in f64): they are a few hundred MFLOP per layer and the
//! conditioning of λC0 + KKᵀ is beyond f32.

use super::hparams::{BatchHparams, BatchMethod};
use super::keys::{subject_prompt, SubjectPrompt};
use super::method::{Method, MethodRecord, Writer};
use super::nse::BaseWeights;
use super::request::EditRequest;
use super::rome::CovSolver;
use crate::model::names::down_name;
use super::target::{optimise_targets_within, target_batch, Target};
use super::update::{Delta, Update};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::linalg::subspace::HostComplement;
use crate::model::batch::Batch;
use crate::model::forward::GpuModel;
use crate::model::weights::HostTensor;
use crate::model::Tok;
use crate::ops::gather::gather_rows;
use faer::prelude::*;
use faer::{Mat, Side};
use serde::Serialize;

/// One layer's solve: the right factor X (m×n) of ΔW = R Xᵀ from the keys K (m×n) and the
/// residuals R (d×n), plus what is worth recording.
pub trait Solver {
    fn solve(&mut self, i: usize, k: &Mat<f64>, r: &Mat<f64>) -> Result<(Mat<f64>, serde_json::Value)>;
    /// The solve with ΔW's rows kept in `right` (I − V_kV_kᵀ, the input directions the layer's
    /// REVIVE filter lets through), so that the filter has nothing to remove on that side: the
    /// best update among those it passes unchanged. None where the method has no such solve
    /// (it then solves as usual, and the filter removes what it must).
    fn solve_within(&mut self, _i: usize, _k: &Mat<f64>, _r: &Mat<f64>, _right: &HostComplement) -> Result<Option<(Mat<f64>, serde_json::Value)>> {
        Ok(None)
    }
    /// Keys of the batch, measured after all its updates, for methods that remember them.
    fn wants_final_keys(&self) -> bool {
        false
    }
    /// Rebuilds state from a batch's final keys (`keys[i]` for the i-th edited layer).
    fn observe_keys(&mut self, _keys: &[Mat<f64>]) -> Result<()> {
        Ok(())
    }
}

/// Rewrites a proposed update before the writer sees it (RECT, PRUNE).
pub trait Shaper {
    fn shape(&mut self, gpu: &Gpu, i: usize, w: &Tensor, delta: Delta) -> Result<(Delta, serde_json::Value)>;
    /// The i-th layer's update as written.
    fn observe(&mut self, _gpu: &Gpu, _i: usize, _written: &Delta) -> Result<()> {
        Ok(())
    }
}

/// MEMIT's solve, X = (λC0 + KKᵀ)⁻¹K, through Woodbury with C0 factorised once per layer:
/// (λC0 + KKᵀ)⁻¹K = Y(λI + KᵀY)⁻¹ with Y = C0⁻¹K, so a batch costs an m×n triangular solve and
/// an n×n factorisation instead of an m×m one.
///
/// Within the guard ([`Solver::solve_within`]): the same least squares with ΔW = ΔW·P, P =
/// I − VVᵀ, is MEMIT's solve with K' = PK and C0 compressed to the complement, A = (PC0P on
/// range P). Its inverse comes from C0's own factor by the Schur complement, A⁻¹y =
/// P(C0⁻¹y − G H⁻¹ Gᵀy) for y in range P, with G = C0⁻¹V and H = VᵀC0⁻¹V (k×k) formed once per
/// layer: no second m×m factorisation. X then lies in range P, so ΔW = RXᵀ has no rows in V.
pub struct MemitSolver {
    pub covs: Vec<CovSolver>,
    pub lambda: f64,
    within: Vec<Option<Compressed>>,
}

/// C0 of one layer compressed to the complement of V: G = C0⁻¹V and H = VᵀC0⁻¹V factorised.
struct Compressed {
    v: Mat<f64>,
    g: Mat<f64>,
    h: faer::linalg::solvers::Llt<f64>,
}

impl MemitSolver {
    pub fn new(covs: Vec<CovSolver>, lambda: f64) -> Self {
        let within = covs.iter().map(|_| None).collect();
        MemitSolver { covs, lambda, within }
    }

    /// X = Y(λI + KᵀY)⁻¹ for Y = C0⁻¹K (or its compressed form), and the mean kᵀC0⁻¹k.
    fn woodbury(&self, k: &Mat<f64>, y: &Mat<f64>) -> Result<(Mat<f64>, f64)> {
        let n = k.ncols();
        let s = symmetric_product(k, y, self.lambda);
        let llt = s.llt(Side::Lower).map_err(|e| Error::Numeric(format!("MEMIT: λI + KᵀC0⁻¹K is not positive definite ({e:?})")))?;
        // X = Y S⁻¹ = (S⁻¹ Yᵀ)ᵀ, S symmetric.
        let x = llt.solve(y.transpose()).transpose().to_owned();
        let key_c0_key: f64 = (0..n).map(|a| (0..k.nrows()).map(|j| k[(j, a)] * y[(j, a)]).sum::<f64>()).sum();
        Ok((x, key_c0_key / n as f64))
    }

    /// The i-th layer's C0 compressed to the complement of `v` (m×k), formed on first use and
    /// kept while the basis stays the same (a session's guards are fixed).
    fn compress(&mut self, i: usize, v: Mat<f64>) -> Result<()> {
        let same = self.within[i].as_ref().is_some_and(|c| c.v.nrows() == v.nrows() && c.v.ncols() == v.ncols() && (&c.v - &v).norm_max() == 0.0);
        if !same {
            let g = self.covs[i].solve_mat(&v)?;
            let h = symmetric_product(&v, &g, 0.0).llt(Side::Lower).map_err(|e| Error::Numeric(format!("MEMIT within the guard: VᵀC0⁻¹V of layer {} is not positive definite ({e:?})", self.covs[i].layer)))?;
            self.within[i] = Some(Compressed { v, g, h });
        }
        Ok(())
    }
}

/// ½(AᵀB + BᵀA) + shift·I, for AᵀB symmetric up to rounding (A = K, B = C0⁻¹K): symmetric to
/// the bit, so that its Cholesky factorisation sees an exactly symmetric matrix.
fn symmetric_product(a: &Mat<f64>, b: &Mat<f64>, shift: f64) -> Mat<f64> {
    let n = a.ncols();
    Mat::<f64>::from_fn(n, n, |i, j| {
        let ij: f64 = (0..a.nrows()).map(|r| a[(r, i)] * b[(r, j)]).sum();
        let ji: f64 = (0..a.nrows()).map(|r| a[(r, j)] * b[(r, i)]).sum();
        0.5 * (ij + ji) + if i == j { shift } else { 0.0 }
    })
}

/// x − V(Vᵀx) for every column of x.
fn project_columns(v: &Mat<f64>, x: &Mat<f64>) -> Mat<f64> {
    x - v * (v.transpose() * x)
}

impl Solver for MemitSolver {
    fn solve(&mut self, i: usize, k: &Mat<f64>, _r: &Mat<f64>) -> Result<(Mat<f64>, serde_json::Value)> {
        let y = self.covs[i].solve_mat(k)?;
        let (x, kck) = self.woodbury(k, &y)?;
        Ok((x, serde_json::json!({ "k_c0inv_k_mean": kck })))
    }

    fn solve_within(&mut self, i: usize, k: &Mat<f64>, r: &Mat<f64>, right: &HostComplement) -> Result<Option<(Mat<f64>, serde_json::Value)>> {
        let v = right.basis();
        if v.nrows() != k.nrows() {
            return Err(Error::shape("MEMIT within the guard", format!("keys of width {}, a protected basis of width {}", k.nrows(), v.nrows())));
        }
        if v.ncols() == 0 {
            return self.solve(i, k, r).map(Some);
        }
        self.compress(i, v)?;
        let c = self.within[i].as_ref().expect("just compressed");
        let kp = project_columns(&c.v, k);
        let y0 = self.covs[i].solve_mat(&kp)?;
        let y = project_columns(&c.v, &(&y0 - &c.g * c.h.solve(c.g.transpose() * &kp)));
        let (x, kck) = self.woodbury(&kp, &y)?;
        // How much of each key the filtered update can read.
        let reach = (0..k.ncols()).map(|a| kp.col(a).norm_l2() / k.col(a).norm_l2().max(f64::MIN_POSITIVE)).sum::<f64>() / k.ncols() as f64;
        Ok(Some((x, serde_json::json!({ "k_c0inv_k_mean": kck, "within_guard": true, "key_reach_mean": reach }))))
    }
}

/// Seconds a batch spent in each phase: the targets (Adam on all requests), the keys and
/// residuals of every layer, the solves (and RECT's / PRUNE's shaping), the writes (the
/// REVIVE filter, the checks, the weight update).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub targets: f64,
    pub keys: f64,
    pub solve: f64,
    pub write: f64,
    /// What the targets cost the runtime (dispatches, bind groups, readbacks …): where a GPU
    /// spends the targets' time beside their arithmetic.
    pub targets_work: crate::gpu::RuntimeStats,
    /// The recording thread's CPU time in the targets (where the platform tells it): close to
    /// `targets` on a GPU, the host sets the pace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets_host_cpu: Option<f64>,
    /// With `REVIVE_PROFILE=1`: the targets' time per kernel (every dispatch waited for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets_profile: Vec<crate::gpu::KernelTime>,
}

/// The per-request part of a batch record.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    pub steps: usize,
    pub nll: f64,
    pub p_target: f64,
    pub delta_norm: f64,
    pub h_norm: f64,
}

impl From<&Target> for TargetSummary {
    fn from(t: &Target) -> Self {
        let last = t.history.last();
        TargetSummary {
            steps: t.history.len(),
            nll: last.map_or(f64::NAN, |s| s.nll),
            p_target: last.map_or(f64::NAN, |s| s.p_target),
            delta_norm: last.map_or(f64::NAN, |s| s.delta_norm),
            h_norm: t.h_norm,
        }
    }
}

/// NSE's repeated layer loop (see [`super::nse`]): which requests take part in a pass, and how
/// many times the distances to the targets are measured.
#[derive(Debug, Clone, Copy)]
pub struct Passes {
    pub alpha: f64,
    pub upper_bound: f64,
    pub max_iterations: usize,
}

/// MEMIT, AlphaEdit, RECT, PRUNE or NSE: the layer loop with a solver and an optional shaper;
/// NSE adds passes and targets on the base weights.
pub struct BatchEditor<'t> {
    pub method: BatchMethod,
    pub hp: BatchHparams,
    pub templates: Vec<String>,
    tok: &'t Tok,
    solver: Box<dyn Solver + 't>,
    shaper: Option<Box<dyn Shaper + 't>>,
    passes: Option<Passes>,
    rewind: Option<BaseWeights>,
}

impl<'t> BatchEditor<'t> {
    pub fn new(hp: BatchHparams, templates: Vec<String>, tok: &'t Tok, solver: Box<dyn Solver + 't>, shaper: Option<Box<dyn Shaper + 't>>) -> Self {
        BatchEditor { method: hp.method, hp, templates, tok, solver, shaper, passes: None, rewind: None }
    }

    /// NSE: the layer loop repeated while requests are far from their targets, the targets
    /// optimised on `base` (the edited matrices' original values).
    pub fn with_passes(mut self, passes: Passes, base: BaseWeights) -> Self {
        self.passes = Some(passes);
        self.rewind = Some(base);
        self
    }
}

/// Per request, its context prompts (template × relation) for the keys; the first template
/// is "{}", so prompt 0 is the plain prompt whose residual the target rewrites.
fn context_prompts(tok: &Tok, templates: &[String], reqs: &[EditRequest]) -> Result<Vec<Vec<SubjectPrompt>>> {
    reqs.iter()
        .enumerate()
        .map(|(r, q)| {
            templates
                .iter()
                .map(|t| subject_prompt(tok, t, &q.prompt, &q.subject))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Edit(format!("request {r} ({:?}): {e}", q.full_prompt())))
        })
        .collect()
}

/// The weight of a request's context `c` (of `n`) in its key. MEMIT's keys average within each
/// kind of context — the plain prompt, the sampled contexts — and then over the kinds, so the
/// plain prompt weighs one half however many contexts were sampled (ROME's key is a plain mean).
pub fn context_weight(c: usize, n: usize) -> f64 {
    match (c, n) {
        (_, 1) => 1.0,
        (0, _) => 0.5,
        _ => 0.5 / (n - 1) as f64,
    }
}

/// Keys of `layer` (each request's contexts weighted by [`context_weight`]; m×n) and the residual after
/// `res_layer` at each plain prompt's subject token (d×n), from one forward pass.
pub fn keys_and_residuals(model: &GpuModel, prompts: &[Vec<SubjectPrompt>], layer: usize, res_layer: usize) -> Result<(Mat<f64>, Mat<f64>)> {
    let seqs: Vec<Vec<u32>> = prompts.iter().flatten().map(SubjectPrompt::up_to_subject).collect();
    let batch = Batch::new(&seqs)?;
    let (keys, res) = model.keys_and_residual(&batch, layer, res_layer)?;
    let gpu = model.gpu();
    let mut rows = vec![];
    let mut plain_rows = vec![];
    let mut s = 0;
    for ps in prompts {
        plain_rows.push(batch.row(s, ps[0].subject_last) as u32);
        for p in ps {
            rows.push(batch.row(s, p.subject_last) as u32);
            s += 1;
        }
    }
    let k = gpu.download(&gather_rows(gpu, &keys, &rows)?)?;
    let z = gpu.download(&gather_rows(gpu, &res, &plain_rows)?)?;
    let (m, d, n) = (keys.shape()[1], res.shape()[1], prompts.len());
    let mut kmat = Mat::<f64>::zeros(m, n);
    let mut row = 0;
    for (r, ps) in prompts.iter().enumerate() {
        for c in 0..ps.len() {
            let w = context_weight(c, ps.len());
            for j in 0..m {
                kmat[(j, r)] += w * k[row * m + j] as f64;
            }
            row += 1;
        }
    }
    Ok((kmat, Mat::<f64>::from_fn(d, n, |j, r| z[r * d + j] as f64)))
}

pub(crate) fn to_f32(m: &Mat<f64>) -> Vec<f32> {
    // Row-major m×n.
    (0..m.nrows()).flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32)).collect()
}

pub(crate) fn upload_mat(gpu: &Gpu, m: &Mat<f64>) -> Result<Tensor> {
    gpu.upload(&to_f32(m), &[m.nrows(), m.ncols()])
}

pub(crate) fn from_host(t: &HostTensor) -> Result<Mat<f64>> {
    match *t.shape.as_slice() {
        [m, n] => Ok(Mat::<f64>::from_fn(m, n, |i, j| t.data[i * n + j] as f64)),
        _ => Err(Error::shape("state", format!("a state tensor of shape {:?}", t.shape))),
    }
}

impl Method for BatchEditor<'_> {
    fn name(&self) -> &'static str {
        self.method.name()
    }

    fn matrices(&self) -> Vec<String> {
        self.hp.layers.iter().map(|&l| down_name(l)).collect()
    }

    fn edit(&mut self, writer: &mut Writer, reqs: &[EditRequest], progress: &mut dyn FnMut(&str)) -> Result<MethodRecord> {
        let hp = &self.hp;
        let last = *hp.layers.last().expect("validated");
        let prompts = context_prompts(self.tok, &self.templates, reqs)?;
        // The residual the targets rewrite is read at the plain prompt alone.
        let plain: Vec<Vec<SubjectPrompt>> = prompts.iter().map(|ps| ps[..1].to_vec()).collect();
        let tbs = reqs
            .iter()
            .enumerate()
            .map(|(r, q)| target_batch(self.tok, &self.templates, &q.prompt, &q.subject, &q.target_new).map_err(|e| Error::Edit(format!("request {r} ({:?}): {e}", q.full_prompt()))))
            .collect::<Result<Vec<_>>>()?;

        // Where the batch's time goes (each phase ends in a download, so the GPU work is in it).
        let mut timing = Timing::default();
        let clock = std::time::Instant::now();
        let host_clock = cpu_time::ThreadTime::try_now().ok();
        let work = writer.model().gpu().runtime_stats();
        let profile = writer.model().gpu().profile();
        // 1. Targets at the last edited layer, all requests together (NSE: on the base weights).
        progress("targets");
        // Through the guard: the targets where the last layer's filtered update can put them
        // (the earlier layers' updates reach z*'s layer through everything between, and the
        // loop hands what they leave to the later ones).
        let reach = writer.reach(&down_name(last))?;
        let mut optimise = || -> Result<(Mat<f64>, Vec<Target>)> {
            let (_, z0) = keys_and_residuals(writer.model(), &plain, last, last)?;
            let d = z0.nrows();
            let hs: Vec<Vec<f32>> = (0..reqs.len()).map(|r| (0..d).map(|j| z0[(j, r)] as f32).collect()).collect();
            let n_req = reqs.len();
            let targets = optimise_targets_within(writer.model(), &tbs, &hs, &hp.target(), reach.as_ref().map(|r| &r.left), |r, s| {
                if r + 1 == n_req {
                    progress(&format!("targets: step {} nll {:.3}", s.step, s.nll));
                }
            })?;
            Ok((z0, targets))
        };
        let (z0, targets) = match &self.rewind {
            Some(base) => base.with_base(writer.model(), optimise)?,
            None => optimise()?,
        };
        let d = z0.nrows();
        let zstar = Mat::<f64>::from_fn(d, reqs.len(), |j, r| z0[(j, r)] + targets[r].delta[j] as f64);
        timing.targets = clock.elapsed().as_secs_f64();
        timing.targets_host_cpu = host_clock.map(|t| t.elapsed().as_secs_f64());
        timing.targets_work = writer.model().gpu().runtime_stats() - work;
        timing.targets_profile = writer.model().gpu().profile_since(&profile);

        // 2. The layers in ascending order, each seeing the earlier ones' written updates; once
        //    (MEMIT and the methods on it) or in NSE's passes, for the requests still far from
        //    their targets.
        let mut layers = vec![];
        let mut passes = vec![];
        for pass in 0.. {
            let active: Vec<usize> = match self.passes {
                None if pass == 0 => (0..reqs.len()).collect(),
                None => break,
                Some(p) => {
                    let t = std::time::Instant::now();
                    let (_, z) = keys_and_residuals(writer.model(), &plain, last, last)?;
                    timing.keys += t.elapsed().as_secs_f64();
                    let dist: Vec<f64> = (0..reqs.len()).map(|r| (0..d).map(|j| (zstar[(j, r)] - z[(j, r)]).powi(2)).sum::<f64>().sqrt()).collect();
                    let active: Vec<usize> = (0..reqs.len()).filter(|&r| dist[r] > p.alpha && dist[r] < p.upper_bound).collect();
                    let done = active.is_empty() || pass + 1 >= p.max_iterations;
                    passes.push(serde_json::json!({ "distances": dist, "active": active, "updated": !done }));
                    if done {
                        break;
                    }
                    active
                }
            };
            let prompts: Vec<Vec<SubjectPrompt>> = active.iter().map(|&r| prompts[r].clone()).collect();
            let zstar = Mat::<f64>::from_fn(d, active.len(), |j, q| zstar[(j, active[q])]);
            for (i, &layer) in hp.layers.iter().enumerate() {
                progress(&if self.passes.is_some() { format!("pass {} layer {layer}", pass + 1) } else { format!("layer {layer}") });
                let gpu = writer.model().gpu().clone();
                let t = std::time::Instant::now();
                let (k, z) = keys_and_residuals(writer.model(), &prompts, layer, last)?;
                timing.keys += t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                let spread = (hp.layers.len() - i) as f64;
                let r = Mat::<f64>::from_fn(d, active.len(), |j, q| (zstar[(j, q)] - z[(j, q)]) / spread);
                // Through the guard: solved among the updates the filter passes on the right.
                let within = match writer.reach(&down_name(layer))? {
                    Some(reach) => self.solver.solve_within(i, &k, &r, &reach.right)?,
                    None => None,
                };
                let (x, solve) = match within {
                    Some(solved) => solved,
                    None => self.solver.solve(i, &k, &r)?,
                };
                let mut delta = Delta::LowRank { left: upload_mat(&gpu, &r)?, right: upload_mat(&gpu, &x)? };
                let mut shaped = serde_json::Value::Null;
                if let Some(s) = self.shaper.as_mut() {
                    (delta, shaped) = s.shape(&gpu, i, writer.model().tensor(&down_name(layer))?, delta)?;
                }
                let residual_norm = r.norm_l2() * spread;
                timing.solve += t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                writer.write(Update { matrix: down_name(layer), delta })?;
                timing.write += t.elapsed().as_secs_f64();
                let mut entry = serde_json::json!({ "layer": layer, "residual_to_go": residual_norm, "solve": solve, "shape": shaped });
                if self.passes.is_some() {
                    entry["pass"] = pass.into();
                }
                layers.push(entry);
            }
        }

        // 3. The keys after the batch, for methods that remember them (AlphaEdit's K_pK_pᵀ).
        let mut state = vec![];
        let t = std::time::Instant::now();
        if self.solver.wants_final_keys() {
            progress("final keys");
            for (i, &layer) in hp.layers.iter().enumerate() {
                let (k, _) = keys_and_residuals(writer.model(), &prompts, layer, layer)?;
                state.push((format!("keys.{i}"), HostTensor::new(vec![k.nrows(), k.ncols()], to_f32(&k))));
            }
        }
        timing.keys += t.elapsed().as_secs_f64();
        state.push(("targets".to_string(), HostTensor::new(vec![d, reqs.len()], to_f32(&zstar))));
        let summaries: Vec<TargetSummary> = targets.iter().map(TargetSummary::from).collect();
        let mut record = serde_json::json!({ "targets": summaries, "layers": layers, "timing": timing });
        if self.passes.is_some() {
            record["passes"] = passes.into();
        }
        Ok(MethodRecord { record, state })
    }

    fn observe(&mut self, gpu: &Gpu, written: &[Update], state: &[(String, HostTensor)]) -> Result<()> {
        if let Some(s) = self.shaper.as_mut() {
            for u in written {
                let i = self.hp.layers.iter().position(|&l| down_name(l) == u.matrix).ok_or_else(|| Error::Edit(format!("{}: a batch wrote {}, outside its layers", self.method.name(), u.matrix)))?;
                s.observe(gpu, i, &u.delta)?;
            }
        }
        if self.solver.wants_final_keys() {
            let keys = (0..self.hp.layers.len())
                .map(|i| {
                    let t = state.iter().find(|(n, _)| *n == format!("keys.{i}")).ok_or_else(|| Error::Edit(format!("{}: the batch record has no keys of layer {}", self.name(), self.hp.layers[i])))?;
                    from_host(&t.1)
                })
                .collect::<Result<Vec<_>>>()?;
            self.solver.observe_keys(&keys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the guard, against the constrained least squares formed densely — X = M⁻¹PK with
    /// M = λ(PC0P + VVᵀ) + PKKᵀP, by an LU of M, not through C0's factor — at awkward sizes; X
    /// has no part in V; an empty basis gives the plain solve.
    #[test]
    fn the_solve_within_the_guard_is_the_constrained_least_squares() {
        let mut rng = crate::testing::rng(21);
        let mut uniform = |rows: usize, cols: usize| Mat::<f64>::from_fn(rows, cols, |_, _| rand::Rng::random_range(&mut rng, -1.0..1.0));
        for (m, n, k) in [(23usize, 5usize, 7usize), (17, 1, 1), (31, 4, 13)] {
            let a = uniform(m, m);
            let c0 = &a * a.transpose() * faer::Scale(1.0 / m as f64) + Mat::<f64>::identity(m, m) * faer::Scale(0.1);
            let c0_f32: Vec<f32> = (0..m).flat_map(|i| (0..m).map(move |j| (i, j))).map(|(i, j)| c0[(i, j)] as f32).collect();
            let keys = uniform(m, n);
            let r = uniform(4, n);
            let q = uniform(m, k).qr().compute_thin_Q();
            let v_f32: Vec<f32> = (0..m).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| q[(i, j)] as f32).collect();
            let right = HostComplement::from_rows(&v_f32, m, k);
            let lambda = 3.0;
            let mut solver = MemitSolver::new(vec![CovSolver::new(0, 100, &c0_f32, m).unwrap()], lambda);
            let (x, rec) = solver.solve_within(0, &keys, &r, &right).unwrap().expect("MEMIT solves within the guard");
            assert_eq!(rec["within_guard"], true);

            let v = right.basis();
            let c0 = Mat::<f64>::from_fn(m, m, |i, j| 0.5 * (c0_f32[i * m + j] as f64 + c0_f32[j * m + i] as f64));
            let p = Mat::<f64>::identity(m, m) - &v * v.transpose();
            let pk = &p * &keys;
            let big = (&p * &c0 * &p + &v * v.transpose()) * faer::Scale(lambda) + &pk * pk.transpose();
            let want = big.partial_piv_lu().solve(&pk);
            let err = (&x - &want).norm_l2() / want.norm_l2();
            assert!(err < 1e-5, "m {m} n {n} k {k}: ‖X − X_ref‖/‖X_ref‖ = {err:e}");
            let leak = (v.transpose() * &x).norm_l2() / x.norm_l2();
            assert!(leak < 1e-6, "m {m} n {n} k {k}: ‖VᵀX‖/‖X‖ = {leak:e}");

            let none = HostComplement::from_rows(&[], m, 0);
            let (plain, _) = solver.solve(0, &keys, &r).unwrap();
            let (within, _) = solver.solve_within(0, &keys, &r, &none).unwrap().unwrap();
            assert_eq!((&plain - &within).norm_max(), 0.0);
        }
    }
}
