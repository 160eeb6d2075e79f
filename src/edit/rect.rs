//! RECT (Gu et al. 2024), a baseline the REVIVE paper compares: MEMIT's update of each layer
//! keeps only its largest entries by relative change |ΔW_ij| / |W_ij|, the top `keep_fraction`
//! of them; the rest are zeroed. The selection runs on the host: it is one pass and one
//! partial sort over m·n values per layer, which a GPU kernel would not make matter.

use super::memit::Shaper;
use super::update::Delta;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

pub struct RectShaper {
    pub keep_fraction: f64,
}

/// ΔW with all but the `keep` entries of largest |ΔW|/|W| zeroed (ties at the threshold kept).
pub fn sparsify(dw: &[f32], w: &[f32], keep: f64) -> Vec<f32> {
    let rel: Vec<f32> = dw.iter().zip(w).map(|(&d, &w)| if w == 0.0 { if d == 0.0 { 0.0 } else { f32::INFINITY } } else { (d / w).abs() }).collect();
    let n_keep = ((keep * dw.len() as f64).ceil() as usize).clamp(1, dw.len());
    let mut sorted = rel.clone();
    let at = dw.len() - n_keep;
    let (_, threshold, _) = sorted.select_nth_unstable_by(at, |a, b| a.total_cmp(b));
    let threshold = *threshold;
    dw.iter().zip(&rel).map(|(&d, &r)| if r >= threshold { d } else { 0.0 }).collect()
}

impl Shaper for RectShaper {
    fn shape(&mut self, gpu: &Gpu, _i: usize, w: &Tensor, delta: Delta) -> Result<(Delta, serde_json::Value)> {
        let dense = delta.dense(gpu)?;
        let dw = gpu.download(&dense)?;
        let kept = sparsify(&dw, &gpu.download(w)?, self.keep_fraction);
        let nonzero = kept.iter().filter(|v| **v != 0.0).count();
        if kept.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numeric("RECT: the update is not finite".into()));
        }
        Ok((Delta::Dense(gpu.upload(&kept, dense.shape())?), serde_json::json!({ "kept_entries": nonzero, "entries": kept.len() })))
    }
}
