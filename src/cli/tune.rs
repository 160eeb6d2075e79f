//! `revive tune`: measure which matmul kernel is fastest for each product shape a model uses,
//! on this adapter, and keep the choices for later runs (`Kernel::Auto` reads them).

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::tuning::model_shapes;
use revive::ops::matmul::{tune, TuneRow};

#[derive(clap::Args)]
pub(super) struct Args {
    /// The model whose shapes are tuned.
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Row counts (tokens) to tune for (repeat the flag).
    #[arg(long = "rows", default_values_t = vec![1usize, 4, 16, 64, 256])]
    rows: Vec<usize>,
    /// Timed runs per kernel and shape (the median counts).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Measure and print, but keep the stored choices as they were.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let loaded = revive::model::load::load(&a.model)?;
    let shapes = model_shapes(&loaded.weights.config, &a.rows);
    drop(loaded);
    let gpu = Gpu::new(choice)?;
    eprintln!("tuning {} product shapes on {}", shapes.len(), gpu.label());
    let bar = revive::progress::bar(shapes.len() as u64, "tune");
    let rows = tune(&gpu, &shapes, a.reps, |row| {
        bar.set_message(format!("{} → {}", row.key, row.best));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    println!("{}", table(&gpu.label(), &rows));
    if !a.dry_run {
        let path = gpu.save_choices(false)?;
        println!("choices kept in {}", path.display());
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({ "adapter": gpu.label(), "driver": format!("{} {}", gpu.info().driver, gpu.info().driver_info), "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn table(label: &str, rows: &[TuneRow]) -> String {
    let mut s = format!("matmul kernels on {label} (median ms; the fixed rule's kernel and its cost against the best)\n\n");
    s += "| shape class | m×n×k | times | best | rule | rule / best |\n|---|---|---|---|---|---:|\n";
    for r in rows {
        let times: Vec<String> = r.times.iter().map(|(k, t)| format!("{k} {t:.3}")).collect();
        s += &format!("| {} | {}×{}×{} | {} | {} | {} | {:.2}× |\n", r.key, r.shape.m, r.shape.n, r.shape.k, times.join(", "), r.best, r.rule, r.rule_over_best);
    }
    s
}
