//! `revive bench`: speed against a baseline run in the same process, one module per measurement.

mod covariance;
mod edit;
mod forward;
mod matmul;
mod svd;

use anyhow::Result;
use clap::Subcommand;
use revive::gpu::BackendChoice;

#[derive(Subcommand)]
pub(super) enum Bench {
    /// GFLOP/s of the tuned matmul, the 16x16-tile baseline and a CPU SGEMM on square sizes.
    Matmul(matmul::Args),
    /// Time per ROME edit, edits applied one after another, with efficacy and the retention of
    /// known facts; one forward pass measured in the same run as the baseline.
    Edit(Box<edit::Args>),
    /// Time to the top-k singular triplets (GPU power iteration) against the CPU SVD, with
    /// the accuracy reached.
    Svd(svd::Args),
    /// How C0 converges with the corpus token count: ‖C0(N) − C0(N_max)‖/‖C0(N_max)‖ for
    /// N = 1k, 2k, 4k, …, the mean diagonal, and the time per 1000 tokens.
    Covariance(covariance::Args),
    /// Prefill and decode tokens/s of the forward pass, against the f64 CPU oracle.
    Forward(forward::Args),
}

pub(super) fn run(choice: BackendChoice, what: Bench) -> Result<()> {
    match what {
        Bench::Forward(args) => forward::run(choice, args),
        Bench::Edit(args) => edit::run(choice, *args),
        Bench::Svd(args) => svd::run(choice, args),
        Bench::Covariance(args) => covariance::run(choice, args),
        Bench::Matmul(args) => matmul::run(choice, args),
    }
}
