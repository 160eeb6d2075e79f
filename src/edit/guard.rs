//! The REVIVE guard of one edited matrix: the top-k singular subspaces U_k, V_k of its
//! *original* weight, computed once (and cached on disk), and the filter every editing method
//! runs its ΔW through before writing it:
//!   ΔW_safe = (I − U_k U_kᵀ) ΔW (I − V_k V_kᵀ).

use crate::linalg::subspace::{Basis, HostComplement, Leak};
use crate::linalg::svd::{top_energy, top_k, SvdOptions, TopK};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::project::complement;
use crate::ops::reduce::{frobenius, reduce_all_value, ReduceOp};
use crate::store::{self, Outcome};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How many directions to protect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RankRule {
    /// The smallest k with Σ_{i≤k} σ_i² ≥ τ ‖W‖_F².
    Energy(f64),
    /// A fixed k.
    Rank(usize),
}

impl RankRule {
    fn tag(&self) -> String {
        match self {
            RankRule::Energy(t) => format!("tau{t}"),
            RankRule::Rank(k) => format!("rank{k}"),
        }
    }
}

/// What a guard protects and how it was found (for records and reports).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardInfo {
    pub matrix: String,
    pub rule: RankRule,
    pub k: usize,
    pub shape: [usize; 2],
    /// The protected singular values, non-increasing.
    pub sigma: Vec<f64>,
    /// ‖W‖_F² of the original weight.
    pub total_energy: f64,
    /// Σ_{i≤k} σ_i² / ‖W‖_F².
    pub energy_fraction: f64,
    pub iterations: usize,
    pub residual: f64,
    pub seconds: f64,
    pub cache: Option<String>,
}

pub struct SpectralGuard {
    pub u: Tensor,
    pub v: Tensor,
    pub info: GuardInfo,
}

/// What the filter did to one update.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FilterReport {
    pub before: Leak,
    pub after: Leak,
    /// ‖ΔW_safe‖_F / ‖ΔW‖_F.
    pub kept: f64,
}

/// What an update through the filter can still do, for targets optimised through it
/// ("targets through the guard", docs/architecture.md §3): a filtered update's output lies in
/// `left` (I − U_kU_kᵀ), and it reads only the part of a key in `right` (I − V_kV_kᵀ). A target
/// outside `left` cannot be reached by the filtered update of the layer that writes it.
pub struct Reach {
    pub left: HostComplement,
    pub right: HostComplement,
}

/// Bumped when the file layout or the meaning of a field changes.
const FORMAT: &str = "revive-basis-v1";

/// SHA-256 of a weight's shape and values.
pub fn weight_hash(gpu: &Gpu, w: &Tensor) -> Result<String> {
    let mut bytes = format!("{:?}", w.shape()).into_bytes();
    bytes.extend(bytemuck::cast_slice::<f32, u8>(&gpu.download(w)?));
    Ok(store::sha256_hex(&bytes))
}

impl SpectralGuard {
    /// The guard of `w` (the original weight, m×n), computed now.
    pub fn compute(gpu: &Gpu, w: &Tensor, matrix: &str, rule: RankRule, opts: &SvdOptions) -> Result<Self> {
        let start = std::time::Instant::now();
        let (m, n) = match *w.shape() {
            [m, n] => (m, n),
            _ => return Err(Error::shape("guard", format!("{matrix} is {:?}, not a matrix", w.shape()))),
        };
        let (r, total): (TopK, f64) = match rule {
            RankRule::Energy(tau) => top_energy(gpu, w, tau, opts)?,
            RankRule::Rank(k) => (top_k(gpu, w, k, opts)?, reduce_all_value(gpu, w, ReduceOp::SumSq)? as f64),
        };
        let kept: f64 = r.sigma.iter().map(|s| s * s).sum();
        let info = GuardInfo {
            matrix: matrix.to_string(),
            rule,
            k: r.sigma.len(),
            shape: [m, n],
            energy_fraction: kept / total,
            sigma: r.sigma,
            total_energy: total,
            iterations: r.iterations,
            residual: r.residual,
            seconds: start.elapsed().as_secs_f64(),
            cache: None,
        };
        Ok(SpectralGuard { u: r.u, v: r.v, info })
    }

    /// The guard of `w`, from `dir` when a file for the same weights (hash), matrix, rule and
    /// SVD tolerance is there; computed and written otherwise. The seed and oversampling are not
    /// in the key: they change the basis only within the tolerance.
    pub fn cached(gpu: &Gpu, w: &Tensor, matrix: &str, rule: RankRule, opts: &SvdOptions, dir: &Path) -> Result<(Self, Outcome)> {
        let hash = weight_hash(gpu, w)?;
        let path = dir.join(format!("basis-{}-{}-{}.safetensors", &hash[..16], matrix.replace('.', "_"), rule.tag()));
        let fields = vec![
            ("format", FORMAT.to_string()),
            ("weight_hash", hash),
            ("matrix", matrix.to_string()),
            ("rule", rule.tag()),
            ("tol", format!("{:e}", opts.tol)),
        ];
        let (mut g, outcome) = store::load_or_compute(
            &path,
            "spectral basis",
            |p| Self::read(gpu, p, &fields, matrix, rule),
            || Self::compute(gpu, w, matrix, rule, opts),
            |p, g| g.write(gpu, p, &fields),
        )?;
        g.info.cache = Some(format!("{} ({outcome:?})", path.display()));
        Ok((g, outcome))
    }

    fn write(&self, gpu: &Gpu, path: &Path, fields: &[(&str, String)]) -> Result<()> {
        let [m, n] = self.info.shape;
        let k = self.info.k;
        let mut f = fields.to_vec();
        f.push(("info", serde_json::to_string(&self.info).map_err(|e| Error::Edit(format!("guard info to JSON: {e}")))?));
        let sigma: Vec<f32> = self.info.sigma.iter().map(|&s| s as f32).collect();
        store::save(path, &f, &[("u", vec![m, k], &gpu.download(&self.u)?), ("v", vec![n, k], &gpu.download(&self.v)?), ("sigma", vec![k], &sigma)])
    }

    fn read(gpu: &Gpu, path: &Path, fields: &[(&str, String)], matrix: &str, rule: RankRule) -> Result<Self> {
        let st = store::load_cache(path, fields)?;
        let bad = |d: String| Error::Model { file: path.display().to_string(), detail: d };
        let mut info: GuardInfo = serde_json::from_str(st.field("info")?).map_err(|e| bad(format!("header field 'info': {e}")))?;
        if info.matrix != matrix || info.rule != rule || info.sigma.len() != info.k || info.k == 0 {
            return Err(bad(format!("header field 'info' describes {} {:?} k {}", info.matrix, info.rule, info.k)));
        }
        let [m, n] = info.shape;
        let u = gpu.upload(&st.tensor("u", &[m, info.k])?, &[m, info.k])?;
        let v = gpu.upload(&st.tensor("v", &[n, info.k])?, &[n, info.k])?;
        info.seconds = 0.0;
        Ok(SpectralGuard { u, v, info })
    }

    /// The protected basis, for diagnostics against the original.
    pub fn basis(&self) -> Basis {
        Basis { u: self.u.clone(), v: self.v.clone(), sigma: self.info.sigma.clone() }
    }

    /// ΔW_safe = (I − U_k U_kᵀ) ΔW (I − V_k V_kᵀ), with what it removed.
    pub fn filter(&self, gpu: &Gpu, dw: &Tensor) -> Result<(Tensor, FilterReport)> {
        if dw.shape() != self.info.shape {
            return Err(Error::shape("guard", format!("ΔW is {:?}, the guard of {} is for {:?}", dw.shape(), self.info.matrix, self.info.shape)));
        }
        let norm = frobenius(gpu, dw)?;
        let before = Leak::of(gpu, &self.u, &self.v, dw, norm)?;
        let safe = complement(gpu, dw, Some(&self.u), Some(&self.v))?;
        let safe_norm = frobenius(gpu, &safe)?;
        let after = Leak::of(gpu, &self.u, &self.v, &safe, safe_norm)?;
        // A zero update loses nothing to the filter (not 0/0).
        let kept = if norm == 0.0 { 1.0 } else { safe_norm / norm };
        if !kept.is_finite() {
            return Err(Error::Numeric(format!("the filtered update of {} is not finite", self.info.matrix)));
        }
        Ok((safe, FilterReport { before, after, kept }))
    }

    /// The filter of an update in either form; factors stay factors (each projected on its
    /// side), so a rank-r update stays rank r. The report is measured on the dense product.
    pub fn filter_delta(&self, gpu: &Gpu, delta: &crate::edit::update::Delta) -> Result<(crate::edit::update::Delta, FilterReport)> {
        use crate::edit::update::Delta;
        match delta {
            Delta::Dense(dw) => {
                let (safe, report) = self.filter(gpu, dw)?;
                Ok((Delta::Dense(safe), report))
            }
            Delta::LowRank { left, right } => {
                if delta.shape()? != self.info.shape {
                    return Err(Error::shape("guard", format!("ΔW is {:?}, the guard of {} is for {:?}", delta.shape()?, self.info.matrix, self.info.shape)));
                }
                let dense = delta.dense(gpu)?;
                let norm = frobenius(gpu, &dense)?;
                let before = Leak::of(gpu, &self.u, &self.v, &dense, norm)?;
                let safe = Delta::LowRank { left: complement(gpu, left, Some(&self.u), None)?, right: complement(gpu, right, Some(&self.v), None)? };
                let safe_dense = safe.dense(gpu)?;
                let safe_norm = frobenius(gpu, &safe_dense)?;
                let after = Leak::of(gpu, &self.u, &self.v, &safe_dense, safe_norm)?;
                // A zero update loses nothing to the filter (not 0/0).
                let kept = if norm == 0.0 { 1.0 } else { safe_norm / norm };
                if !kept.is_finite() {
                    return Err(Error::Numeric(format!("the filtered update of {} is not finite", self.info.matrix)));
                }
                Ok((safe, FilterReport { before, after, kept }))
            }
        }
    }

    /// The complements of the protected subspaces on the host, for methods that optimise their
    /// targets through this filter ([`Reach`]).
    pub fn reach(&self, gpu: &Gpu) -> Result<Reach> {
        Ok(Reach { left: HostComplement::new(gpu, &self.u)?, right: HostComplement::new(gpu, &self.v)? })
    }

    /// The fractions of ΔW in the protected left and right subspaces.
    pub fn leak(&self, gpu: &Gpu, dw: &Tensor) -> Result<Leak> {
        Leak::of(gpu, &self.u, &self.v, dw, frobenius(gpu, dw)?)
    }
}

/// Where guards are cached: `cache_dir()/spectral/`.
pub fn guard_dir() -> PathBuf {
    crate::model::fetch::cache_dir().join("spectral")
}
