//! PRUNE (Ma et al. 2025), a baseline the REVIVE paper compares: the singular values of the
//! accumulated update of a layer (every batch so far plus this one) that exceed σ_max(W0) are
//! restrained to F(σ) = ln σ − ln σ_max + σ_max, so the edits cannot grow the condition number
//! without bound. The batch writes the difference between the restrained accumulation and the
//! accumulation so far.
//!
//! The accumulation is kept in f64 on the host from the updates as written (so with REVIVE, the
//! filtered ones) and rebuilt from the journal on resume; its SVD (576×1536) runs on the host in
//! f64, where the small singular values it leaves alone are exact.

use super::memit::Shaper;
use super::update::Delta;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use faer::Mat;

pub struct PruneShaper {
    /// σ_max of each edited layer's original weight.
    pub sigma_max: Vec<f64>,
    /// Σ ΔW written so far, per layer (d×m, f64).
    pub accumulated: Vec<Mat<f64>>,
}

/// PRUNE's restraint of one singular value above σ_max.
pub fn restrain(sigma: f64, sigma_max: f64) -> f64 {
    if sigma > sigma_max { sigma.ln() - sigma_max.ln() + sigma_max } else { sigma }
}

fn host(gpu: &Gpu, t: &Tensor) -> Result<Mat<f64>> {
    let v = gpu.download(t)?;
    let (m, n) = (t.shape()[0], t.shape()[1]);
    Ok(Mat::<f64>::from_fn(m, n, |i, j| v[i * n + j] as f64))
}

/// The proposal `dw` minus the part of (acc + dw) above σ_max: Σ_{σ_i > σ_max} (σ_i − F(σ_i)) u_i v_iᵀ.
pub fn restrained(acc: &Mat<f64>, dw: &Mat<f64>, sigma_max: f64) -> Result<(Mat<f64>, usize)> {
    let total = acc + dw;
    let svd = total.thin_svd().map_err(|e| Error::Numeric(format!("PRUNE: SVD of the accumulated update failed ({e:?})")))?;
    let s = svd.S();
    let (u, v) = (svd.U(), svd.V());
    let mut out = dw.clone();
    let mut squashed = 0;
    for i in 0..s.dim() {
        let sig = s[i];
        if sig > sigma_max {
            squashed += 1;
            let cut = sig - restrain(sig, sigma_max);
            for a in 0..out.nrows() {
                for b in 0..out.ncols() {
                    out[(a, b)] -= cut * u[(a, i)] * v[(b, i)];
                }
            }
        }
    }
    Ok((out, squashed))
}

impl PruneShaper {
    pub fn new(gpu: &Gpu, originals: &[&Tensor]) -> Result<Self> {
        let mut sigma_max = vec![];
        let mut accumulated = vec![];
        for w in originals {
            let top = crate::linalg::svd::top_k(gpu, w, 1, &Default::default())?;
            sigma_max.push(top.sigma[0]);
            accumulated.push(Mat::<f64>::zeros(w.shape()[0], w.shape()[1]));
        }
        Ok(PruneShaper { sigma_max, accumulated })
    }
}

impl Shaper for PruneShaper {
    fn shape(&mut self, gpu: &Gpu, i: usize, _w: &Tensor, delta: Delta) -> Result<(Delta, serde_json::Value)> {
        let dw = host(gpu, &delta.dense(gpu)?)?;
        let (out, squashed) = restrained(&self.accumulated[i], &dw, self.sigma_max[i])?;
        let t = super::memit::upload_mat(gpu, &out)?;
        Ok((Delta::Dense(t), serde_json::json!({ "restrained_singular_values": squashed, "sigma_max_w0": self.sigma_max[i] })))
    }

    fn observe(&mut self, gpu: &Gpu, i: usize, written: &Delta) -> Result<()> {
        let dw = host(gpu, &written.dense(gpu)?)?;
        self.accumulated[i] += dw;
        Ok(())
    }
}
