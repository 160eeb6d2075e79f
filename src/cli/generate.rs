//! `revive generate`: text after a prompt, printed as it comes; several prompts (`-p` repeated
//! or `--prompts FILE`) decode together and print when done, or go to `--json FILE`.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::generate::{generate, generate_many_reporting, Sampling};

#[derive(clap::Args)]
pub(super) struct Args {
    /// 'smollm2', a .gguf file or a Hugging Face safetensors directory.
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Repeat for several prompts: they decode together, prompt i sampled with seed + i.
    #[arg(short, long, required_unless_present = "prompts")]
    prompt: Vec<String>,
    /// More prompts, one per line of FILE, after those of -p.
    #[arg(long, value_name = "FILE")]
    prompts: Option<std::path::PathBuf>,
    /// Also write every prompt with its continuation (text and token ids) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
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
    let Args { model, mut prompt, prompts, json, tokens, temperature, top_k, seed } = a;
    anyhow::ensure!(temperature.is_finite() && temperature >= 0.0, "--temperature {temperature}: give a finite number ≥ 0 (0 is greedy)");
    if let Some(file) = &prompts {
        prompt.extend(super::common::read_prompt_lines(file, "generate after")?);
    }
    if let Some(path) = &json {
        super::common::ensure_writable(path, "--json")?;
    }
    let m = super::common::load_model(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let sampling = Sampling { temperature, top_k: top_k.map_or(0, |k| k as usize), seed };
    if let ([prompt], None) = (prompt.as_slice(), &json) {
        let ids = m.tok.encode_prompt(prompt)?;
        let mut shown = String::new();
        print!("{prompt}");
        let mut out = vec![];
        generate(&gm, &ids, tokens, sampling, m.tok.eos(), |t| {
            out.push(t);
            // Decode the whole continuation each time: a token may be half a character, which
            // decodes as U+FFFD until the rest comes, so only text that extends what was shown
            // and does not end in one is printed.
            if let Ok(text) = m.tok.decode(&out) {
                if let Some(new) = text.strip_prefix(shown.as_str()).filter(|_| !text.ends_with('\u{FFFD}')) {
                    print!("{new}");
                    shown = text;
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                }
            }
        })?;
        // What a last, unfinished character left unshown.
        let text = m.tok.decode(&out)?;
        println!("{}", text.strip_prefix(shown.as_str()).unwrap_or_default());
        return Ok(());
    }
    let ids: Vec<Vec<u32>> = prompt.iter().map(|p| m.tok.encode_prompt(p)).collect::<revive::Result<_>>()?;
    let samplings: Vec<Sampling> = (0..prompt.len()).map(|i| Sampling { seed: seed.wrapping_add(i as u64), ..sampling }).collect();
    let bar = revive::progress::terminal_bar((ids.len() * tokens) as u64, "generating: tokens", true);
    let outs = generate_many_reporting(&gm, &ids, tokens, &samplings, m.tok.eos(), &mut |_, _| bar.inc(1))?;
    bar.finish_and_clear();
    let mut rows = vec![];
    for (i, (p, out)) in prompt.iter().zip(&outs).enumerate() {
        let text = m.tok.decode(out)?;
        if i > 0 {
            println!();
        }
        println!("{p}{text}");
        rows.push(serde_json::json!({ "prompt": p, "seed": samplings[i].seed, "continuation": text, "ids": out }));
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "model": m.source, "adapter": gpu.label(), "tokens": tokens, "temperature": temperature, "top_k": sampling.top_k, "generations": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
