//! How far an edited weight's spectrum moved from the original's: the overlap of the top-k
//! singular subspaces (‖U⁰_kᵀ U_k‖²_F / k, 1 = unchanged, k/min(m, n) ≈ random), the top
//! singular values, ‖W‖_F and ‖W − W0‖_F.

use crate::linalg::subspace::{subspace_similarity, Basis, Leak};
use crate::linalg::svd::{top_k_from, SvdOptions};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::names::down_name;
use crate::ops::elementwise::{axpy, scale};
use crate::ops::reduce::frobenius;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostics {
    pub matrix: String,
    pub k: usize,
    /// ‖U⁰_kᵀ U_k‖²_F / k.
    pub left_similarity: f64,
    /// ‖V⁰_kᵀ V_k‖²_F / k.
    pub right_similarity: f64,
    /// The top k singular values now, and of the original.
    pub sigma: Vec<f64>,
    pub sigma_original: Vec<f64>,
    pub weight_norm: f64,
    pub original_norm: f64,
    /// ‖W − W0‖_F.
    pub drift: f64,
    /// How much of the accumulated update W − W0 lies in the original top-k subspaces:
    /// ‖U⁰_kᵀ(W − W0)‖/‖W − W0‖ and ‖(W − W0)V⁰_k‖/‖W − W0‖ (0 when W = W0). REVIVE keeps these
    /// near f32 rounding; the similarity above can fall anyway, when the update's own
    /// directions outgrow σ_k and enter the current top k.
    pub leak: Leak,
    pub svd_iterations: usize,
}

/// Diagnostics of `w` against the original `w0` and its top-k `basis`; the SVD of `w` starts
/// from the original right basis (an edited weight is close to it, so it converges fast).
pub fn diagnose(gpu: &Gpu, matrix: &str, w: &Tensor, w0: &Tensor, basis: &Basis, opts: &SvdOptions) -> Result<Diagnostics> {
    if w.shape() != w0.shape() {
        return Err(Error::shape("spectrum", format!("{matrix}: {:?} against an original of {:?}", w.shape(), w0.shape())));
    }
    let k = basis.sigma.len();
    let now = top_k_from(gpu, w, k, opts, Some(&basis.v))?;
    let diff = scale(gpu, w, 1.0)?;
    axpy(gpu, -1.0, w0, &diff)?;
    let drift = frobenius(gpu, &diff)?;
    let leak = if drift > 0.0 { Leak::of(gpu, &basis.u, &basis.v, &diff, drift)? } else { Leak { left: 0.0, right: 0.0 } };
    Ok(Diagnostics {
        matrix: matrix.to_string(),
        k,
        left_similarity: subspace_similarity(gpu, &basis.u, &now.u)?,
        right_similarity: subspace_similarity(gpu, &basis.v, &now.v)?,
        sigma: now.sigma,
        sigma_original: basis.sigma.clone(),
        weight_norm: frobenius(gpu, w)?,
        original_norm: frobenius(gpu, w0)?,
        drift,
        leak,
        svd_iterations: now.iterations,
    })
}

/// One layer's down-projection in `revive spectrum`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSpectrum {
    pub layer: usize,
    pub matrix: String,
    pub shape: [usize; 2],
    /// The top k singular values (k from the rule on the original, or on this model alone).
    pub sigma: Vec<f64>,
    pub weight_norm: f64,
    /// Against the original, when one was given.
    pub against: Option<Diagnostics>,
}

/// The spectra of the down-projections of `layers` (all when empty; with an original, all
/// that differ from it), each against the original's top-k basis when there is one.
pub fn model_spectra(
    gpu: &Gpu,
    weights: &crate::model::Weights,
    original: Option<&crate::model::Weights>,
    layers: &[usize],
    rule: crate::edit::guard::RankRule,
    opts: &SvdOptions,
) -> Result<Vec<LayerSpectrum>> {
    use crate::edit::guard::SpectralGuard;
    let n_layers = weights.config.n_layers;
    let mut chosen: Vec<usize> = if layers.is_empty() { (0..n_layers).collect() } else { layers.to_vec() };
    if let Some(&bad) = chosen.iter().find(|&&l| l >= n_layers) {
        return Err(Error::Edit(format!("layer {bad}: the model has {n_layers} layers")));
    }
    if let Some(orig) = original {
        if orig.config.n_layers != n_layers {
            return Err(Error::Edit(format!("the original has {} layers, the model {n_layers}", orig.config.n_layers)));
        }
        if layers.is_empty() {
            let name = down_name;
            let mut differ = vec![];
            for l in chosen {
                if weights.get(&name(l))?.data != orig.get(&name(l))?.data {
                    differ.push(l);
                }
            }
            chosen = differ;
        }
    }
    let bar = crate::progress::bar(chosen.len() as u64, "singular spectra");
    let mut out = vec![];
    for l in chosen {
        let matrix = down_name(l);
        let host = weights.get(&matrix)?;
        let w = gpu.upload(&host.data, &host.shape)?;
        let shape = [host.shape[0], host.shape[1]];
        let row = match original {
            Some(orig) => {
                let h0 = orig.get(&matrix)?;
                let w0 = gpu.upload(&h0.data, &h0.shape)?;
                let g = SpectralGuard::compute(gpu, &w0, &matrix, rule, opts)?;
                let d = diagnose(gpu, &matrix, &w, &w0, &g.basis(), opts)?;
                LayerSpectrum { layer: l, matrix, shape, sigma: d.sigma.clone(), weight_norm: d.weight_norm, against: Some(d) }
            }
            None => {
                let g = SpectralGuard::compute(gpu, &w, &matrix, rule, opts)?;
                LayerSpectrum { layer: l, matrix, shape, sigma: g.info.sigma, weight_norm: g.info.total_energy.sqrt(), against: None }
            }
        };
        out.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}
