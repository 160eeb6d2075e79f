//! `revive tune`: measure which matmul kernel is fastest for each product shape a model uses,
//! on this adapter, and keep the choices for later runs (`Kernel::Auto` reads them).

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::Config;
use revive::ops::matmul::{tune, Shape, TuneRow};

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

/// The products of a forward and backward pass at `rows` tokens, and of the covariance: every
/// linear map forward (x·Wᵀ), its input gradient (dy·W) and weight gradient (dyᵀ·x, not for
/// the vocabulary head, which is never trained), and the keys' second moment KᵀK.
pub fn model_shapes(c: &Config, rows: &[usize]) -> Vec<Shape> {
    let kv = c.n_kv_heads * c.head_dim;
    let linear = [(c.hidden, c.hidden), (kv, c.hidden), (c.ffn_hidden, c.hidden), (c.hidden, c.ffn_hidden), (c.vocab_size, c.hidden)];
    let mut v = vec![];
    for &m in rows {
        for &(out, inp) in &linear {
            v.push(Shape { m, n: out, k: inp, trans_a: false, trans_b: true });
            v.push(Shape { m, n: inp, k: out, trans_a: false, trans_b: false });
            if out != c.vocab_size {
                v.push(Shape { m: out, n: inp, k: m, trans_a: true, trans_b: false });
            }
        }
        v.push(Shape { m: c.ffn_hidden, n: c.ffn_hidden, k: m, trans_a: true, trans_b: false });
    }
    v
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
        let path = gpu.save_choices()?;
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
