//! `revive score`: per-token log-probabilities of a continuation after a prompt.

use anyhow::Result;
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::generate::score;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(short, long)]
    prompt: String,
    #[arg(short, long)]
    continuation: String,
    #[arg(long)]
    json: bool,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { model, prompt, continuation, json } = a;
    let m = super::common::load_model(&model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let (p, c) = (m.tok.encode_prompt(&prompt)?, m.tok.encode(&continuation)?);
    let lp = score(&gm, &p, &c)?;
    let total: f64 = lp.iter().sum();
    if json {
        let tokens: Vec<_> = c.iter().zip(&lp).map(|(t, l)| serde_json::json!({"id": t, "token": m.tok.decode(&[*t]).unwrap_or_default(), "logprob": l})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"prompt": prompt, "continuation": continuation, "tokens": tokens, "sum": total}))?);
    } else {
        for (t, l) in c.iter().zip(&lp) {
            println!("{:>8} {:?} {l:.4}", t, m.tok.decode(&[*t]).unwrap_or_default());
        }
        println!("sum {total:.4}  (p = {:.4e})", total.exp());
    }
    Ok(())
}
