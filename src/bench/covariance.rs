//! `revive bench covariance`: how fast C0 = E[k kᵀ] converges with the number of corpus tokens,
//! ‖C0(N) − C0(N_max)‖_F / ‖C0(N_max)‖_F for doubling N, with the mean diagonal and the time
//! per 1000 tokens. One pass: C0(N) is read off the running sum at each N.

use crate::edit::corpus;
use crate::edit::covariance::{batches, progress_bar, real_keys, Accumulator};
use crate::edit::moment::SecondMoment;
use crate::error::{Error, Result};
use crate::model::forward::GpuModel;
use crate::model::Tok;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct ConvergenceRow {
    pub tokens: usize,
    /// ‖C0(N) − C0(N_max)‖_F / ‖C0(N_max)‖_F.
    pub rel_diff: f64,
    pub mean_diag: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CovarianceReport {
    pub layer: usize,
    pub dim: usize,
    pub seq_len: usize,
    pub rows: Vec<ConvergenceRow>,
    /// Wall-clock seconds per 1000 tokens (forward through layers 0..=layer plus the gemm).
    pub secs_per_1k: f64,
}

/// Checkpoints 1024, 2048, 4096, … up to `n_max` (always included), over the WordNet corpus
/// in the order the cached statistics use.
pub fn run(model: &GpuModel, tok: &Tok, layer: usize, n_max: usize, progress: bool) -> Result<CovarianceReport> {
    let seqs = corpus::wordnet_sequences(tok, n_max, model.config.max_seq_len)?;
    let batch_tokens = 1024;
    let mut checkpoints: Vec<usize> = std::iter::successors(Some(batch_tokens), |n| Some(n * 2)).take_while(|&n| n < n_max).collect();
    checkpoints.push(n_max);
    // Compiles every pipeline outside the timed loop.
    real_keys(model, &[seqs.first().ok_or_else(|| Error::Edit("covariance bench: empty corpus".into()))?.clone()], layer)?;
    model.gpu().sync()?;
    let bar = progress_bar(n_max as u64, layer, progress);
    let mut acc = Accumulator::new(model.gpu(), model.config.ffn_hidden, 8)?;
    let mut snaps: Vec<SecondMoment> = vec![];
    let start = Instant::now();
    for b in batches(&seqs, n_max, batch_tokens) {
        acc.add(&real_keys(model, &b, layer)?)?;
        bar.set_position(acc.tokens() as u64);
        if checkpoints.get(snaps.len()).is_some_and(|&c| acc.tokens() >= c) {
            snaps.push(acc.moment(layer)?);
        }
    }
    if snaps.last().is_none_or(|s| s.tokens != acc.tokens()) {
        snaps.push(acc.moment(layer)?);
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let last = snaps.last().expect("at least one snapshot").clone();
    let rows = snaps.iter().map(|s| ConvergenceRow { tokens: s.tokens, rel_diff: s.rel_diff(&last), mean_diag: s.mean_diag() }).collect();
    Ok(CovarianceReport { layer, dim: last.dim, seq_len: corpus::SEQ_LEN.min(model.config.max_seq_len), rows, secs_per_1k: secs * 1000.0 / last.tokens as f64 })
}

pub fn table(label: &str, model_name: &str, r: &CovarianceReport) -> String {
    let n_max = r.rows.last().map_or(0, |x| x.tokens);
    let mut s = format!(
        "C0 convergence, {model_name}, layer {} (keys of width {}), WordNet corpus in sequences of {} tokens; adapter: {label}\n\n",
        r.layer, r.dim, r.seq_len
    );
    s += &format!("| N tokens | ‖C0(N) − C0({n_max})‖_F / ‖C0({n_max})‖_F | mean diagonal |\n|---:|---:|---:|\n");
    for row in &r.rows {
        s += &format!("| {} | {:.4} | {:.5} |\n", row.tokens, row.rel_diff, row.mean_diag);
    }
    s += &format!("\ntime: {:.2} s per 1000 tokens\n", r.secs_per_1k);
    s
}
