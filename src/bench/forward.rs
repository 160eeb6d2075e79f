//! `revive bench forward`: prefill and decode tokens/s of the GPU forward, with the f64 CPU
//! oracle's prefill measured in the same run for the ratio.

use super::median;
use crate::cpu::model::CpuModel;
use crate::error::Result;
use crate::model::forward::{Batch, GpuModel, LogitRows};
use crate::model::probe::Probes;
use crate::model::Weights;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// (tokens, tokens/s) of a single-sequence prefill.
    pub prefill: Vec<(usize, f64)>,
    pub decode_tokens_per_s: f64,
    /// The f64 oracle's prefill rate and the length it was measured on.
    pub cpu_tokens: usize,
    pub cpu_tokens_per_s: f64,
    pub timer: &'static str,
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = crate::testing::rng(seed);
    (0..n).map(|_| rand::Rng::random_range(&mut r, 0..vocab as u32)).collect()
}

pub fn run(model: &GpuModel, weights: &Weights, prefill: &[usize], decode: usize, cpu_tokens: usize, reps: usize) -> Result<ForwardReport> {
    let gpu = model.gpu();
    let v = model.config.vocab_size;
    let bar = crate::progress::bar((prefill.len() * reps + 2) as u64, "forward");
    model.last_logits(&[tokens(8, v, 0)])?; // builds every pipeline once
    let mut rates = vec![];
    for &n in prefill {
        let batch = Batch::new(&[tokens(n, v, n as u64)])?;
        let mut times = vec![];
        for _ in 0..reps {
            let t = gpu.time(|| model.forward(&batch, &Probes::default(), LogitRows::Rows(vec![n - 1]), None).map(|_| ()))?;
            times.push(t.best());
            bar.inc(1);
        }
        rates.push((n, n as f64 / median(times).as_secs_f64()));
    }
    let mut cache = model.new_cache(1, 16 + decode)?;
    model.forward(&Batch::new(&[tokens(16, v, 1)])?, &Probes::default(), LogitRows::Rows(vec![15]), Some(&mut cache))?;
    let steps: Vec<Batch> = tokens(decode, v, 2).into_iter().map(|t| Batch::new(&[vec![t]])).collect::<Result<_>>()?;
    let mut decode_time = Duration::ZERO;
    for step in &steps {
        decode_time += gpu.time(|| model.forward(step, &Probes::default(), LogitRows::All, Some(&mut cache)).map(|_| ()))?.best();
    }
    bar.inc(1);
    let cpu = CpuModel::new(weights);
    let seq = tokens(cpu_tokens, v, 3);
    let start = Instant::now();
    cpu.forward(&[seq], &Probes::default());
    let cpu_time = start.elapsed();
    bar.finish_and_clear();
    Ok(ForwardReport {
        prefill: rates,
        decode_tokens_per_s: decode as f64 / decode_time.as_secs_f64(),
        cpu_tokens,
        cpu_tokens_per_s: cpu_tokens as f64 / cpu_time.as_secs_f64(),
        timer: if gpu.has_timestamps() { "gpu timestamps" } else { "wall clock" },
    })
}

pub fn table(label: &str, model_name: &str, r: &ForwardReport) -> String {
    let mut s = format!("forward, {model_name}; adapter: {label}; {}\n\n", r.timer);
    s += "| measure | GPU tokens/s | f64 CPU oracle tokens/s | GPU / CPU |\n|---|---:|---:|---:|\n";
    for (n, rate) in &r.prefill {
        s += &format!("| prefill {n} tokens | {rate:.1} | {:.2} (on {} tokens) | {:.1}x |\n", r.cpu_tokens_per_s, r.cpu_tokens, rate / r.cpu_tokens_per_s);
    }
    s += &format!("| decode (1 token, KV cache) | {:.1} | | |\n", r.decode_tokens_per_s);
    s
}
