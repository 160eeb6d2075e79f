//! `revive bench covariance`: how C0 converges with the corpus token count.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::load::load;

#[derive(clap::Args)]
pub(in crate::cli) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value_t = 5)]
    layer: usize,
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, layer, tokens, json } = a;
    let m = load(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let report = revive::bench::covariance::run(&gm, &m.tok, layer, tokens, true)?;
    println!("{}", revive::bench::covariance::table(&gpu.label(), &m.source, &report));
    if let Some(path) = json {
        let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "report": report });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
