//! `revive logits`: last-token logits of each prompt in a file, as JSON.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(long)]
    prompts: std::path::PathBuf,
    #[arg(long)]
    out: std::path::PathBuf,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, prompts, out } = a;
    let lines = super::common::read_prompt_lines(&prompts, "score")?;
    super::common::ensure_writable(&out, "--out")?;
    let m = super::common::load_model(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let mut rows = vec![];
    for prompt in &lines {
        let ids = m.tok.encode_prompt(prompt)?;
        let logits = gm.last_logits(std::slice::from_ref(&ids))?.remove(0);
        rows.push(serde_json::json!({ "prompt": prompt, "ids": ids, "logits": logits }));
    }
    let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "rows": rows });
    std::fs::write(&out, serde_json::to_string(&doc)?).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
