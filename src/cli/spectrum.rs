//! `revive spectrum`: the singular spectrum of the MLP down-projections, and how far an edited
//! model's moved from the original.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// The original model; only the layers whose down-projection differs are reported.
    #[arg(long)]
    against: Option<String>,
    /// Only these layers (repeat the flag).
    #[arg(long = "layer")]
    layers: Vec<usize>,
    /// k from this energy fraction of the original weight (as REVIVE's guard).
    #[arg(long, default_value_t = 0.5, conflicts_with = "rank")]
    tau: f64,
    #[arg(long)]
    rank: Option<usize>,
    /// The spectra and similarities as SVG.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    use revive::edit::guard::RankRule;
    let Args { model, against, layers, tau, rank, plot, json } = a;
    anyhow::ensure!(tau > 0.0 && tau <= 1.0, "--tau {tau}: a fraction of the energy, in (0, 1]");
    let rule = rank.map(RankRule::Rank).unwrap_or(RankRule::Energy(tau));
    let m = super::common::load_model(&model)?;
    let orig = against.as_deref().map(revive::model::load::load).transpose()?;
    let gpu = Gpu::new(choice)?;
    let opts = revive::linalg::svd::SvdOptions::default();
    let rows = revive::eval::spectrum::model_spectra(&gpu, &m.weights, orig.as_ref().map(|o| &o.weights), &layers, rule, &opts)?;
    if rows.is_empty() {
        println!("no down-projection differs from the original's");
        return Ok(());
    }
    println!("{} on {} ({rule:?})", m.source, gpu.label());
    println!(
        "{:>5} {:>5} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10}",
        "layer", "k", "σ₁", "σ_k", "‖W‖_F", "‖W−W0‖_F", "σ₁ orig", "sim left", "sim right", "leak left", "leak right"
    );
    for r in &rows {
        let cols = match &r.against {
            Some(d) => [
                format!("{:.4}", d.drift),
                format!("{:.4}", d.sigma_original[0]),
                format!("{:.6}", d.left_similarity),
                format!("{:.6}", d.right_similarity),
                format!("{:.1e}", d.leak.left),
                format!("{:.1e}", d.leak.right),
            ],
            None => std::array::from_fn(|_| "-".to_string()),
        };
        let [drift, s0, sl, sr, ll, lr] = cols;
        println!("{:>5} {:>5} {:>9.4} {:>9.4} {:>9.3} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10}", r.layer, r.sigma.len(), r.sigma[0], r.sigma[r.sigma.len() - 1], r.weight_norm, drift, s0, sl, sr, ll, lr);
    }
    if let Some(path) = plot {
        revive::eval::plot::spectra(&rows, &path)?;
        println!("plot: {}", path.display());
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "model": m.source, "against": against, "adapter": gpu.label(), "rule": rule, "layers": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
