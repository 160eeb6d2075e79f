//! f64 references of the batch methods' layer loop (MEMIT, AlphaEdit, NSE) on the CPU model:
//! keys and residuals from the f64 forward, the normal equations formed densely and solved by
//! LU — none of the GPU path's shortcuts (Woodbury, projections applied as X − Q(QᵀX)).

use super::model::CpuModel;
use crate::model::probe::{Probes, Site};
use faer::prelude::*;
use faer::Mat;

/// One request for the reference: its context prompts (token ids, subject's last position);
/// the first is the plain prompt whose residual the target rewrites.
pub struct RefRequest {
    pub contexts: Vec<(Vec<u32>, usize)>,
}

/// How one layer's update is solved.
pub enum RefSolve<'a> {
    /// ΔW = R Kᵀ (λ C0 + K Kᵀ)⁻¹.
    Memit { c0: &'a [Mat<f64>], lambda: f64 },
    /// ΔW = R Kᵀ Pᵀ M⁻ᵀ, M = P (K Kᵀ + preserved) + α I, P dense (m×m) per layer.
    AlphaEdit { p: &'a [Mat<f64>], preserved: &'a [Mat<f64>], alpha: f64 },
}

fn keys_and_z(model: &CpuModel, reqs: &[RefRequest], layer: usize, last: usize) -> (Mat<f64>, Mat<f64>) {
    let (m, d) = (model.config.ffn_hidden, model.config.hidden);
    let mut k = Mat::<f64>::zeros(m, reqs.len());
    let mut z = Mat::<f64>::zeros(d, reqs.len());
    for (r, q) in reqs.iter().enumerate() {
        let seqs: Vec<Vec<u32>> = q.contexts.iter().map(|c| c.0.clone()).collect();
        let probes = Probes {
            down_in: q.contexts.iter().enumerate().map(|(s, c)| Site { layer, seq: s, pos: c.1 }).collect(),
            residual: vec![Site { layer: last, seq: 0, pos: q.contexts[0].1 }],
            ..Default::default()
        };
        let (_, cap) = model.forward(&seqs, &probes);
        // MEMIT's compute_ks: the mean within each kind of context (the plain prompt first, then
        // the sampled ones), then the mean of the kinds' means.
        let (plain, sampled) = cap.down_in.split_first().expect("a plain prompt");
        for j in 0..m {
            let plain = plain[j] as f64;
            k[(j, r)] = if sampled.is_empty() { plain } else { 0.5 * (plain + sampled.iter().map(|s| s[j] as f64).sum::<f64>() / sampled.len() as f64) };
        }
        for j in 0..d {
            z[(j, r)] = cap.residual[0][j] as f64;
        }
    }
    (k, z)
}

/// The keys of `layer` (m×n) of every request, as the batch methods average them.
pub fn batch_keys(model: &CpuModel, reqs: &[RefRequest], layer: usize) -> Mat<f64> {
    keys_and_z(model, reqs, layer, layer).0
}

/// The updates (d×m, one per layer) the layer loop writes for targets `zstar` (d×n), applying
/// each to `model` before the next layer's keys are read.
pub fn layer_loop(model: &mut CpuModel, reqs: &[RefRequest], zstar: &Mat<f64>, layers: &[usize], solve: &RefSolve) -> Vec<Mat<f64>> {
    let last = *layers.last().expect("at least one layer");
    let mut out = vec![];
    for (i, &layer) in layers.iter().enumerate() {
        let (k, z) = keys_and_z(model, reqs, layer, last);
        let r = (zstar - &z) * Scale(1.0 / (layers.len() - i) as f64);
        let dw = match solve {
            RefSolve::Memit { c0, lambda } => {
                let a = &c0[i] * Scale(*lambda) + &k * k.transpose();
                // ΔW = R (A⁻¹ K)ᵀ, A symmetric.
                let x = a.partial_piv_lu().solve(&k);
                &r * x.transpose()
            }
            RefSolve::AlphaEdit { p, preserved, alpha } => {
                let m = k.nrows();
                let a = &p[i] * (&k * k.transpose() + &preserved[i]) + Mat::<f64>::identity(m, m) * Scale(*alpha);
                let y = a.partial_piv_lu().solve(&p[i] * &k);
                &r * y.transpose()
            }
        };
        let (d, m) = (dw.nrows(), dw.ncols());
        let flat: Vec<f64> = (0..d).flat_map(|a| (0..m).map(move |b| (a, b))).map(|(a, b)| dw[(a, b)]).collect();
        model.add_to(&format!("layers.{layer}.w_down"), &flat);
        out.push(dw);
    }
    out
}

/// NSE's values for the reference (see `edit::nse`).
pub struct RefNse<'a> {
    pub c0: &'a [Mat<f64>],
    pub preserved: &'a [Mat<f64>],
    pub lambda: f64,
    pub alpha: f64,
    pub upper_bound: f64,
    pub max_iterations: usize,
    pub neuron_threshold: f64,
}

/// NSE's passes on the f64 model: at each iteration the distances ‖z* − z‖ of every request;
/// unless it is the last or none lies in (alpha, upper_bound), a pass of the layer loop over those
/// that do, each layer's update restricted to its selected neurons. Returns the dense updates in
/// the order written and the distances of each iteration.
pub fn nse_loop(model: &mut CpuModel, reqs: &[RefRequest], zstar: &Mat<f64>, layers: &[usize], nse: &RefNse) -> (Vec<Mat<f64>>, Vec<Vec<f64>>) {
    let last = *layers.last().expect("at least one layer");
    let (mut out, mut distances) = (vec![], vec![]);
    for iteration in 0..nse.max_iterations {
        let (_, z) = keys_and_z(model, reqs, last, last);
        let dist: Vec<f64> = (0..reqs.len()).map(|r| (0..z.nrows()).map(|j| (zstar[(j, r)] - z[(j, r)]).powi(2)).sum::<f64>().sqrt()).collect();
        let active: Vec<usize> = (0..reqs.len()).filter(|&r| dist[r] > nse.alpha && dist[r] < nse.upper_bound).collect();
        distances.push(dist);
        if active.is_empty() || iteration + 1 == nse.max_iterations {
            break;
        }
        let sub: Vec<RefRequest> = active.iter().map(|&r| RefRequest { contexts: reqs[r].contexts.clone() }).collect();
        for (i, &layer) in layers.iter().enumerate() {
            let (k, z) = keys_and_z(model, &sub, layer, last);
            let r = Mat::<f64>::from_fn(z.nrows(), sub.len(), |j, q| (zstar[(j, active[q])] - z[(j, q)]) / (layers.len() - i) as f64);
            let sel = ranked_within(&k, nse.neuron_threshold);
            let ks = Mat::<f64>::from_fn(sel.len(), sub.len(), |a, q| k[(sel[a], q)]);
            let a = Mat::<f64>::from_fn(sel.len(), sel.len(), |x, y| nse.lambda * nse.c0[i][(sel[x], sel[y])] + nse.preserved[i][(sel[x], sel[y])]) + &ks * ks.transpose();
            let xs = a.partial_piv_lu().solve(&ks);
            let part = &r * xs.transpose();
            let mut dw = Mat::<f64>::zeros(z.nrows(), k.nrows());
            for (a, &j) in sel.iter().enumerate() {
                for row in 0..dw.nrows() {
                    dw[(row, j)] = part[(row, a)];
                }
            }
            let (d, m) = (dw.nrows(), dw.ncols());
            let flat: Vec<f64> = (0..d).flat_map(|a| (0..m).map(move |b| (a, b))).map(|(a, b)| dw[(a, b)]).collect();
            model.add_to(&format!("layers.{layer}.w_down"), &flat);
            out.push(dw);
        }
    }
    (out, distances)
}

/// Neuron j is kept when the scores (Σ|k| over the columns) ranked at or above it, ties by index,
/// sum to at most `threshold` of all scores — counted out for each neuron; all of them for a
/// threshold of 1; at least the first.
fn ranked_within(k: &Mat<f64>, threshold: f64) -> Vec<usize> {
    let m = k.nrows();
    if threshold >= 1.0 {
        return (0..m).collect();
    }
    let score: Vec<f64> = (0..m).map(|j| (0..k.ncols()).map(|q| k[(j, q)].abs()).sum()).collect();
    let total: f64 = score.iter().sum();
    let above = |a: usize, b: usize| score[a] > score[b] || (score[a] == score[b] && a < b);
    let mut kept: Vec<(usize, usize)> = (0..m)
        .filter_map(|j| {
            let rank = (0..m).filter(|&i| above(i, j)).count();
            let upto: f64 = score[j] + (0..m).filter(|&i| above(i, j)).map(|i| score[i]).sum::<f64>();
            (upto <= threshold * total || rank == 0).then_some((rank, j))
        })
        .collect();
    kept.sort();
    kept.into_iter().map(|(_, j)| j).collect()
}
