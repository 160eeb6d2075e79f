//! `revive export`: a model saved as Hugging Face safetensors + config.json + tokenizer.json.

use anyhow::Result;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(long)]
    out: std::path::PathBuf,
}

pub(super) fn run(a: Args) -> Result<()> {
    let Args { model, out } = a;
    let m = super::common::load_model(&model)?;
    revive::model::load::save(&m.weights, &m.tok, &out, revive::model::safetensors::SaveDtype::F32)?;
    println!("{}", out.display());
    Ok(())
}
