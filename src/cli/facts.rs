//! `revive facts`: which known facts the model answers (greedy next token).

use anyhow::Result;
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// A JSON list of {"prompt", "answer"}.
    #[arg(long, default_value = "assets/facts/known.json")]
    facts: std::path::PathBuf,
    #[arg(long)]
    json: bool,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, facts, json } = a;
    let facts = revive::eval::retention::load_facts(&facts)?;
    let m = super::common::load_model(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let bar = revive::progress::terminal_bar(0, "facts: scoring passes", true);
    let checks = revive::eval::retention::check_facts_reporting(&gm, &m.tok, &facts, &mut |done, passes| {
        bar.set_length(passes as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let summary = format!("{}/{} correct", checks.iter().filter(|c| c.correct).count(), checks.len());
    if json {
        // Standard output stays one JSON document, for whatever reads it.
        println!("{}", serde_json::to_string_pretty(&checks)?);
        eprintln!("{summary}");
    } else {
        for c in &checks {
            println!("{} {}{:?} (expected {:?}, log p {:.2})", if c.correct { "ok  " } else { "MISS" }, c.prompt, c.got, c.answer, c.logp);
        }
        println!("{summary}");
    }
    Ok(())
}
