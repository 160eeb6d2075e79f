//! `revive export`: a model saved as Hugging Face safetensors + config.json + tokenizer.json.

use anyhow::Result;
use revive::model::load::load;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(long)]
    out: std::path::PathBuf,
}

pub(super) fn run(a: Args) -> Result<()> {
    let Args { model, out } = a;
    let m = load(&model)?;
    revive::model::load::save(&m.weights, &m.tok, &out, revive::model::safetensors::SaveDtype::F32)?;
    println!("{}", out.display());
    Ok(())
}
