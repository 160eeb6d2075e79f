//! Runs the C0 convergence measurement on SmolLM2 and prints the table (Markdown).
//! Usage: cargo run --release --example covariance -- [LAYER] [N_MAX]
//! Also prints the corpus facts (lines, tokens) and checks `layer_second_moment`'s cache.

use revive::bench::covariance::{run, table};
use revive::edit::corpus;
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layer: usize = args.first().map_or(Ok(5), |s| s.parse())?;
    let n_max: usize = args.get(1).map_or(Ok(16384), |s| s.parse())?;
    let m = revive::model::load::load("smollm2")?;
    let lines = corpus::lines(corpus::WORDNET);
    let t = Instant::now();
    let all = corpus::sequences(&m.tok, corpus::WORDNET, corpus::SEQ_LEN, None, usize::MAX)?;
    let n: usize = all.iter().map(Vec::len).sum();
    println!("corpus: {} lines, {} bytes, {n} SmolLM2 tokens (tokenized in {:.1} s)", lines.len(), corpus::WORDNET.len(), t.elapsed().as_secs_f64());
    let gpu = Gpu::new(BackendChoice::resolve(None)?)?;
    let model = GpuModel::new(&gpu, &m.weights)?;
    let r = run(&model, &m.tok, layer, n_max, true)?;
    println!("{}", table(&gpu.label(), "SmolLM2-135M-Instruct Q4_1", &r));
    Ok(())
}
