//! `revive export`: a model saved as Hugging Face safetensors + config.json + tokenizer.json,
//! or as a GGUF (for llama.cpp and the tools built on it): over the GGUF it came from, or
//! written whole from a Hugging Face directory.

use anyhow::{bail, Result};
use revive::model::gguf::export::{export_over, EditedType};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A Hugging Face directory: model.safetensors (f32), config.json, tokenizer.json.
    Hf,
    /// One .gguf file: over a GGUF base its tensors and metadata, the edited tensors rewritten;
    /// from a Hugging Face directory written whole (the Llama block as llama, with q/k/v
    /// biases as qwen2; a byte-level BPE tokenizer), as llama.cpp's converter writes one.
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
    /// as they are. From a Hugging Face directory: the type of every matrix (f32, f16, bf16,
    /// q8_0).
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
                // No base to copy: every tensor written, in the type asked for.
                let ty = match edited_type.unwrap_or(EditedType::As(revive::model::gguf::GgmlType::F32)) {
                    EditedType::As(ty) => ty,
                    EditedType::Keep => bail!("--edited-type keep re-encodes in the base GGUF's types, and {} is a Hugging Face directory: give f32, f16, bf16 or q8_0", m.source),
                };
                let name = out.file_stem().map_or("revive".into(), |n| n.to_string_lossy().into_owned());
                let w = revive::model::gguf::convert::write_new(&m.weights, &m.tok, ty, &name, &out)?;
                for name in &w.kept_f32 {
                    eprintln!("kept in f32 (its rows are not whole {ty:?} blocks): {name}");
                }
                eprintln!("a new {} GGUF: {} tensors, matrices in {ty:?}; {:.1} MB", w.architecture, w.tensors, w.bytes as f64 / 1e6);
                println!("{}", out.display());
                return Ok(());
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
