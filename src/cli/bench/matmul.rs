//! `revive bench matmul`: GFLOP/s of the tuned matmul against the 16x16-tile baseline and a CPU
//! SGEMM.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};

#[derive(clap::Args)]
pub(in crate::cli) struct Args {
    /// Square sizes to measure (repeat the flag).
    #[arg(long = "size", default_values_t = vec![256usize, 512, 1024])]
    sizes: Vec<usize>,
    /// Skip the CPU baseline (it is slow for large sizes on small machines).
    #[arg(long)]
    no_cpu: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { sizes, no_cpu, json } = a;
    let gpu = Gpu::new(choice)?;
    let rows = revive::bench::matmul::run(&gpu, &sizes, no_cpu)?;
    println!("{}", revive::bench::matmul::table(&gpu.label(), &rows));
    if let Some(path) = json {
        let doc = serde_json::json!({ "adapter": gpu.label(), "driver": gpu.info().driver_info, "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
