//! `revive generate`: text after a prompt, printed as it comes.

use anyhow::Result;
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::generate::{generate, Sampling};

#[derive(clap::Args)]
pub(super) struct Args {
    /// 'smollm2', a .gguf file or a Hugging Face safetensors directory.
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(short, long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long, default_value_t = 16)]
    tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only (k ≥ 1; without it, among all).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    top_k: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, prompt, tokens, temperature, top_k, seed } = a;
    anyhow::ensure!(temperature.is_finite() && temperature >= 0.0, "--temperature {temperature}: give a finite number ≥ 0 (0 is greedy)");
    let m = super::common::load_model(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let ids = m.tok.encode(&prompt)?;
    let sampling = Sampling { temperature, top_k: top_k.map_or(0, |k| k as usize), seed };
    let mut shown = String::new();
    print!("{prompt}");
    let mut out = vec![];
    generate(&gm, &ids, tokens, sampling, m.tok.eos(), |t| {
        out.push(t);
        // Decode the whole continuation each time: a token may be half a character.
        if let Ok(text) = m.tok.decode(&out) {
            print!("{}", &text[shown.len().min(text.len())..]);
            shown = text;
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    })?;
    println!();
    Ok(())
}
