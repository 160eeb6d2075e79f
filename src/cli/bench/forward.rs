//! `revive bench forward`: prefill and decode tokens/s of the forward pass, against the f64 CPU
//! oracle.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::load::load;

#[derive(clap::Args)]
pub(in crate::cli) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Use random values with SmolLM2's shapes (speed does not depend on the values).
    #[arg(long)]
    random_weights: bool,
    /// Prefill lengths (repeat the flag).
    #[arg(long = "prefill", default_values_t = vec![128usize, 512])]
    prefill: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Sequences of different lengths decoded together, each at its own position, beside the
    /// single sequence (as fluency generates; 0: not measured).
    #[arg(long, default_value_t = 8)]
    together: usize,
    /// Tokens the (slow) CPU oracle runs.
    #[arg(long, default_value_t = 16)]
    cpu_tokens: usize,
    #[arg(long, default_value_t = 2)]
    reps: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, random_weights: random, prefill, decode, together, cpu_tokens, reps, json } = a;
    let (weights, name) = if random {
        (revive::model::random::random_weights(&revive::model::Config::smollm2_135m(), 0), "SmolLM2-135M shapes, random weights".to_string())
    } else {
        let m = load(&model)?;
        (m.weights, m.source)
    };
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &weights)?;
    let report = revive::bench::forward::run(&gm, &weights, &prefill, decode, together, cpu_tokens, reps)?;
    println!("{}", revive::bench::forward::table(&gpu.label(), &name, &report));
    if let Some(path) = json {
        let doc = serde_json::json!({ "adapter": gpu.label(), "model": name, "report": report });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
