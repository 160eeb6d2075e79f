//! `revive export`: a model saved as Hugging Face safetensors + config.json + tokenizer.json,
//! or as a GGUF over the GGUF it came from (for llama.cpp and the tools built on it).

use anyhow::{bail, Result};
use revive::model::gguf::export::{export_over, EditedType};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A Hugging Face directory: model.safetensors (f32), config.json, tokenizer.json.
    Hf,
    /// One .gguf file: the base GGUF's tensors and metadata, the edited tensors rewritten.
    Gguf,
}

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// A directory (hf) or a .gguf file (gguf).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Default: gguf when --out ends in .gguf, else hf.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// GGUF only: the type of the tensors an edit changed (default f32, which keeps the edit
    /// exactly; f16, q8_0, …; keep: the base tensor's own type). Unchanged tensors are copied
    /// as they are.
    #[arg(long)]
    edited_type: Option<EditedType>,
}

pub(super) fn run(a: Args) -> Result<()> {
    let Args { model, out, format, edited_type } = a;
    let format = format.unwrap_or(if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) { Format::Gguf } else { Format::Hf });
    if format == Format::Hf && edited_type.is_some() {
        bail!("--edited-type is for a GGUF export (--format gguf, or --out ending in .gguf); a Hugging Face directory is written in f32");
    }
    let m = super::common::load_model(&model)?;
    match format {
        Format::Hf => revive::model::load::save(&m.weights, &m.tok, &out, revive::model::safetensors::SaveDtype::F32)?,
        Format::Gguf => {
            let Some(base) = &m.gguf else {
                bail!(
                    "{}: a GGUF export is written over the GGUF the model came from (its tokenizer and metadata), and this model is a Hugging Face directory; export it as one (--format hf) and convert it with llama.cpp's convert_hf_to_gguf.py",
                    m.source
                );
            };
            let e = export_over(base, &m.weights, edited_type.unwrap_or(EditedType::As(revive::model::gguf::GgmlType::F32)), &out)?;
            for (name, ty) in &e.rewritten {
                eprintln!("rewritten: {name} ({ty:?})");
            }
            eprintln!("{} tensors rewritten, {} copied from {}; {:.1} MB", e.rewritten.len(), e.copied, base.display(), e.bytes as f64 / 1e6);
        }
    }
    println!("{}", out.display());
    Ok(())
}
