//! Runs the C0 convergence measurement on SmolLM2 and prints the table (Markdown).
//! Usage: cargo run --release --example covariance -- [LAYER] [N_MAX] [cache]
//! Also prints the corpus facts (lines, tokens); with `cache`, instead of the table, calls
//! `layer_second_moment` twice for N_MAX tokens (the second call reads the cache).

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
    if args.get(2).is_some_and(|a| a == "cache") {
        for i in 0..2 {
            let t = Instant::now();
            let c = revive::edit::covariance::layer_second_moment(&model, &m.tok, layer, n_max, true)?;
            println!("call {i}: {:.1} s, {} tokens, mean diagonal {:.5}", t.elapsed().as_secs_f64(), c.tokens, c.mean_diag());
        }
        return Ok(());
    }
    let r = run(&model, &m.tok, layer, n_max, true)?;
    println!("{}", table(&gpu.label(), "SmolLM2-135M-Instruct Q4_1", &r));
    Ok(())
}
