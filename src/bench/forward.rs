//! `revive bench forward`: prefill and decode tokens/s of the GPU forward, with the f64 CPU
//! oracle's prefill measured in the same run for the ratio.

use super::{median, median_f64};
use crate::cpu::model::CpuModel;
use crate::error::Result;
use crate::gpu::RuntimeStats;
use crate::model::batch::Batch;
use crate::model::forward::{GpuModel, LogitRows};
use crate::model::probe::Probes;
use crate::model::Weights;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// (tokens, tokens/s) of a single-sequence prefill, by the best timer (GPU timestamps
    /// where the adapter has them).
    pub prefill: Vec<(usize, f64)>,
    pub decode_tokens_per_s: f64,
    /// The same as a user sees them: wall clock from the call to the finished GPU work (host
    /// recording and submits included), median over the repetitions: (tokens, ms). The
    /// repetitions follow one untimed pass at the length, as later prompts of a run do.
    pub prefill_wall_ms: Vec<(usize, f64)>,
    /// The wall clock of that first pass at each length (tokens, ms): shapes met for the first
    /// time — the kernels' first use at them, new buffers and bind groups — as a run's first
    /// prompt of a length pays once.
    pub prefill_first_wall_ms: Vec<(usize, f64)>,
    pub decode_wall_ms_per_token: f64,
    /// The host's own part of those wall clocks (recording, checks, uploads: the wall clock
    /// less the waits for the GPU and the queue's submits), median / mean the same way: a GPU
    /// cannot run the work faster than this.
    pub prefill_host_ms: Vec<(usize, f64)>,
    pub decode_host_ms_per_token: f64,
    /// The recording thread's CPU time over the same regions (0 where the platform does not
    /// tell it).
    pub prefill_host_cpu_ms: Vec<(usize, f64)>,
    pub decode_host_cpu_ms_per_token: f64,
    pub decode_tokens: usize,
    /// What the runtime did for one decoded token (the mean over the decode steps, rounded
    /// down) and for one prefill of the first length.
    pub decode_runtime: RuntimeStats,
    pub prefill_runtime: RuntimeStats,
    /// With `REVIVE_PROFILE=1`: (entry point, dispatches, ms) over the decode steps.
    pub decode_profile: Vec<(String, u64, f64)>,
    /// The same for one prefill of the first length.
    pub prefill_profile: Vec<(String, u64, f64)>,
    /// Sequences decoded together, each at its own position (prompts of different lengths, as
    /// `generate_many` runs them; 0: not measured), their tokens/s summed over the sequences
    /// by the same timer as `decode_tokens_per_s`, and the runtime's work per step.
    pub together: usize,
    pub together_tokens_per_s: f64,
    pub together_runtime: RuntimeStats,
    /// `together` prompts sampled for `decode_tokens` tokens as fluency samples them (top 5 at
    /// temperature 1, `generate_many`), reading each step's candidates back against reading
    /// whole rows, alternating; None where `together` is 0.
    pub sampled: Option<SampledGeneration>,
    /// One prompt of 16 tokens continued greedily for `decode_tokens` tokens (`generate`), each
    /// step queued from the token the GPU chose before it comes back, against each step waiting
    /// for its token, alternating: the decode a user of `revive generate` sees.
    pub greedy: GreedyGeneration,
    /// The f64 oracle's prefill rate and the length it was measured on.
    pub cpu_tokens: usize,
    pub cpu_tokens_per_s: f64,
    pub timer: &'static str,
}

/// Sampled generation read back two ways, medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct SampledGeneration {
    pub sequences: usize,
    pub tokens: usize,
    /// Each step queued from the tokens the GPU drew among the candidates, before they come
    /// back (`Readback::Ahead`).
    pub ahead: GenerationRun,
    /// Steps of those runs queued from a GPU draw that the host's draw contradicted and run
    /// again (`generate::steps_redone`): how often the f32 draw falls within rounding of a
    /// boundary on this adapter.
    pub ahead_steps_redone: usize,
    /// Each step's top-5 logits and their tokens, found on the GPU, waited for.
    pub candidates: GenerationRun,
    /// Each step's whole rows of logits, the top 5 chosen on the host (the way before).
    pub whole_rows: GenerationRun,
}

/// Greedy generation two ways, medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct GreedyGeneration {
    pub sequences: usize,
    pub tokens: usize,
    /// Each step queued from the GPU's choice before that comes back (`Readback::Ahead`).
    pub ahead: GenerationRun,
    /// Each step waiting for its token (`Readback::Candidates`).
    pub waiting: GenerationRun,
    /// Wall clock per token after the first, ms, ahead and waiting: the difference between
    /// generating `tokens` tokens and one (prefill and first token), over `tokens` − 1.
    pub ahead_decode_ms_per_token: f64,
    pub waiting_decode_ms_per_token: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerationRun {
    /// Tokens of all sequences per second of wall clock (prefill included).
    pub tokens_per_s: f64,
    /// Wall clock per decode step, ms (the prefill included in the total).
    pub wall_ms_per_step: f64,
    /// The recording thread's CPU time per decode step (prefill included in the total).
    pub host_cpu_ms_per_step: f64,
    /// Bytes read back per decode step (the prefill's read included in the total).
    pub readback_bytes_per_step: u64,
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = crate::testing::rng(seed);
    (0..n).map(|_| rand::Rng::random_range(&mut r, 0..vocab as u32)).collect()
}

#[allow(clippy::too_many_arguments)]
pub fn run(model: &GpuModel, weights: &Weights, prefill: &[usize], decode: usize, together: usize, cpu_tokens: usize, reps: usize) -> Result<ForwardReport> {
    let gpu = model.gpu();
    let v = model.config.vocab_size;
    let bar = crate::progress::bar((prefill.len() * (reps + 1) + 4) as u64, "forward");
    model.last_logits(&[tokens(8, v, 0)])?; // builds every pipeline once
    let mut rates = vec![];
    let mut walls = vec![];
    let mut hosts = vec![];
    let mut host_cpus = vec![];
    let mut prefill_runtime = RuntimeStats::default();
    let mut prefill_profile = vec![];
    let mut first_walls = vec![];
    for (i, &n) in prefill.iter().enumerate() {
        let batch = Batch::new(&[tokens(n, v, n as u64)])?;
        // Timed apart: with it among the repetitions, the median of two (the larger) was the
        // cold pass (2026-12-07, docs/results.md "The host's time per dispatch").
        let first = gpu.time(|| model.forward(&batch, &Probes::default(), LogitRows::Rows(vec![n - 1]), None).map(|_| ()))?;
        first_walls.push((n, first.wall.as_secs_f64() * 1e3));
        bar.inc(1);
        let mut times = vec![];
        let mut wall = vec![];
        let mut host = vec![];
        let mut host_cpu = vec![];
        for rep in 0..reps {
            let before = gpu.runtime_stats();
            gpu.reset_profile();
            let t = gpu.time(|| model.forward(&batch, &Probes::default(), LogitRows::Rows(vec![n - 1]), None).map(|_| ()))?;
            if i == 0 && rep + 1 == reps {
                prefill_runtime = gpu.runtime_stats() - before;
                prefill_profile = profile_ms(gpu);
            }
            times.push(t.best());
            wall.push(t.wall);
            host.push(t.host());
            host_cpu.push(t.host_cpu.unwrap_or_default());
            bar.inc(1);
        }
        rates.push((n, n as f64 / median(times).as_secs_f64()));
        walls.push((n, median(wall).as_secs_f64() * 1e3));
        hosts.push((n, median(host).as_secs_f64() * 1e3));
        host_cpus.push((n, median(host_cpu).as_secs_f64() * 1e3));
    }
    let mut cache = model.new_cache(1, 17 + decode)?;
    model.forward(&Batch::new(&[tokens(16, v, 1)])?, &Probes::default(), LogitRows::Rows(vec![15]), Some(&mut cache))?;
    // One untimed step first: the first one-token pass meets shapes the prefill did not (its
    // pipelines, its bind groups), and the counts below are meant per token in steady state.
    model.forward(&Batch::new(&[vec![tokens(1, v, 4)[0]]])?, &Probes::default(), LogitRows::All, Some(&mut cache))?;
    let steps: Vec<Batch> = tokens(decode, v, 2).into_iter().map(|t| Batch::new(&[vec![t]])).collect::<Result<_>>()?;
    let mut decode_time = Duration::ZERO;
    let mut decode_wall = Duration::ZERO;
    let mut decode_host = Duration::ZERO;
    let mut decode_host_cpu = Duration::ZERO;
    gpu.reset_profile();
    let before = gpu.runtime_stats();
    for step in &steps {
        let t = gpu.time(|| model.forward(step, &Probes::default(), LogitRows::All, Some(&mut cache)).map(|_| ()))?;
        decode_time += t.best();
        decode_wall += t.wall;
        decode_host += t.host();
        decode_host_cpu += t.host_cpu.unwrap_or_default();
    }
    let decode_runtime = per_step(gpu.runtime_stats() - before, decode);
    let decode_profile = profile_ms(gpu);
    bar.inc(1);
    let (together_tokens_per_s, together_runtime) = if together == 0 { (0.0, RuntimeStats::default()) } else { decode_together(model, together, decode)? };
    bar.inc(1);
    let sampled = if together == 0 { None } else { Some(sampled_generation(model, together, decode, reps)?) };
    bar.inc(1);
    let greedy = greedy_generation(model, decode, reps)?;
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
        prefill_wall_ms: walls,
        prefill_first_wall_ms: first_walls,
        decode_wall_ms_per_token: decode_wall.as_secs_f64() * 1e3 / decode.max(1) as f64,
        prefill_host_ms: hosts,
        decode_host_ms_per_token: decode_host.as_secs_f64() * 1e3 / decode.max(1) as f64,
        prefill_host_cpu_ms: host_cpus,
        decode_host_cpu_ms_per_token: decode_host_cpu.as_secs_f64() * 1e3 / decode.max(1) as f64,
        decode_tokens: decode,
        decode_runtime,
        prefill_runtime,
        decode_profile,
        prefill_profile,
        together,
        together_tokens_per_s,
        together_runtime,
        sampled,
        greedy,
        cpu_tokens,
        cpu_tokens_per_s: cpu_tokens as f64 / cpu_time.as_secs_f64(),
        timer: if gpu.has_timestamps() { "gpu timestamps" } else { "wall clock" },
    })
}

/// The mean of `total` over `steps` steps, rounded down.
fn per_step(total: RuntimeStats, steps: usize) -> RuntimeStats {
    let per = |x: u64| x / steps.max(1) as u64;
    RuntimeStats {
        dispatches: per(total.dispatches),
        passes: per(total.passes),
        submits: per(total.submits),
        buffers: per(total.buffers),
        bind_groups: per(total.bind_groups),
        readbacks: per(total.readbacks),
        readback_bytes: per(total.readback_bytes),
        waited_ns: per(total.waited_ns),
        submit_ns: per(total.submit_ns),
        pipelines: per(total.pipelines),
        pipeline_ns: per(total.pipeline_ns),
    }
}

/// `n` sequences with prompts of 9 to 8 + n tokens decoded together for `steps` steps, each
/// at its own position: tokens/s over all sequences and the runtime's work per step.
fn decode_together(model: &GpuModel, n: usize, steps: usize) -> Result<(f64, RuntimeStats)> {
    let gpu = model.gpu();
    let v = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..n).map(|i| tokens(9 + i, v, 10 + i as u64)).collect();
    let batch = Batch::new(&prompts)?;
    let mut cache = model.new_cache(n, batch.t + steps + 1)?;
    model.forward(&batch, &Probes::default(), LogitRows::Rows(batch.last_rows()), Some(&mut cache))?;
    let fed = |step: usize| -> (Vec<u32>, Vec<usize>) { (tokens(n, v, 100 + step as u64), prompts.iter().map(|p| p.len() + step).collect()) };
    // The untimed first step, as for one sequence.
    let (first, at) = fed(0);
    model.decode_each(&first, &at, &mut cache)?;
    let before = gpu.runtime_stats();
    let mut time = Duration::ZERO;
    for step in 1..=steps {
        let (toks, at) = fed(step);
        time += gpu.time(|| model.decode_each(&toks, &at, &mut cache).map(|_| ()))?.best();
    }
    Ok(((n * steps) as f64 / time.as_secs_f64(), per_step(gpu.runtime_stats() - before, steps)))
}

/// `n` prompts of 9 to 8 + n tokens sampled for `steps` tokens each as fluency samples them,
/// running ahead on the GPU's draws, waiting for candidates and waiting for whole rows, `reps`
/// alternating rounds each; the three must draw the same tokens.
fn sampled_generation(model: &GpuModel, n: usize, steps: usize, reps: usize) -> Result<SampledGeneration> {
    use crate::model::generate::{Readback, Sampling};
    let v = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..n).map(|i| tokens(9 + i, v, 200 + i as u64)).collect();
    let samplings: Vec<Sampling> = (0..n).map(|i| Sampling { temperature: 1.0, top_k: 5, seed: 1000 + i as u64 }).collect();
    let redone = crate::model::generate::steps_redone();
    let [ahead, candidates, whole_rows] = generation_ways(model, &prompts, &samplings, steps, reps, [Readback::Ahead, Readback::Candidates, Readback::WholeRows])?;
    let ahead_steps_redone = crate::model::generate::steps_redone() - redone;
    Ok(SampledGeneration { sequences: n, tokens: steps, ahead, ahead_steps_redone, candidates, whole_rows })
}

/// One prompt of 16 tokens continued greedily for `steps` tokens, running ahead and waiting.
fn greedy_generation(model: &GpuModel, steps: usize, reps: usize) -> Result<GreedyGeneration> {
    use crate::model::generate::{Readback, Sampling};
    let prompts = vec![tokens(16, model.config.vocab_size, 300)];
    let ways = [Readback::Ahead, Readback::Candidates];
    let [ahead, waiting] = generation_ways(model, &prompts, &[Sampling::default()], steps, reps, ways)?;
    let [ahead_first, waiting_first] = generation_ways(model, &prompts, &[Sampling::default()], 1, reps, ways)?;
    let after_first = |all: &GenerationRun, first: &GenerationRun| {
        if steps < 2 { f64::NAN } else { (all.wall_ms_per_step * steps as f64 - first.wall_ms_per_step) / (steps - 1) as f64 }
    };
    Ok(GreedyGeneration {
        sequences: 1,
        tokens: steps,
        ahead_decode_ms_per_token: after_first(&ahead, &ahead_first),
        waiting_decode_ms_per_token: after_first(&waiting, &waiting_first),
        ahead,
        waiting,
    })
}

/// `prompts` generated for `steps` tokens reading back as each of `ways` says, `reps`
/// alternating rounds; every way must give the same tokens.
fn generation_ways<const N: usize>(
    model: &GpuModel,
    prompts: &[Vec<u32>],
    samplings: &[crate::model::generate::Sampling],
    steps: usize,
    reps: usize,
    ways: [crate::model::generate::Readback; N],
) -> Result<[GenerationRun; N]> {
    let gpu = model.gpu();
    let mut rounds: [Vec<(f64, f64, f64, u64)>; N] = std::array::from_fn(|_| vec![]);
    let mut drawn: [Vec<Vec<u32>>; N] = std::array::from_fn(|_| vec![]);
    for _ in 0..reps.max(1) {
        for (i, readback) in ways.into_iter().enumerate() {
            let before = gpu.runtime_stats();
            let t = gpu.time(|| {
                drawn[i] = crate::model::generate::generate_many_reading(model, prompts, steps, samplings, None, readback)?;
                Ok(())
            })?;
            let work = gpu.runtime_stats() - before;
            let produced: usize = drawn[i].iter().map(Vec::len).sum();
            let per_step = |x: f64| x / steps.max(1) as f64;
            rounds[i].push((
                produced as f64 / t.wall.as_secs_f64(),
                per_step(t.wall.as_secs_f64() * 1e3),
                per_step(t.host_cpu.unwrap_or_default().as_secs_f64() * 1e3),
                work.readback_bytes / steps.max(1) as u64,
            ));
        }
    }
    if let Some(i) = (1..N).find(|&i| drawn[i] != drawn[0]) {
        return Err(crate::error::Error::Numeric(format!("generation reading back {:?} gave other tokens than reading back {:?}", ways[i], ways[0])));
    }
    let summary = |r: &[(f64, f64, f64, u64)]| GenerationRun {
        tokens_per_s: median_f64(r.iter().map(|x| x.0).collect()),
        wall_ms_per_step: median_f64(r.iter().map(|x| x.1).collect()),
        host_cpu_ms_per_step: median_f64(r.iter().map(|x| x.2).collect()),
        readback_bytes_per_step: r[0].3,
    };
    Ok(std::array::from_fn(|i| summary(&rounds[i])))
}

fn profile_ms(gpu: &crate::gpu::Gpu) -> Vec<(String, u64, f64)> {
    gpu.profile().into_iter().map(|(e, n, t)| (e.to_string(), n, t.as_secs_f64() * 1e3)).collect()
}

pub fn table(label: &str, model_name: &str, r: &ForwardReport) -> String {
    let mut s = format!("forward, {model_name}; adapter: {label}; {}\n\n", r.timer);
    s += "| measure | GPU tokens/s | f64 CPU oracle tokens/s | GPU / CPU |\n|---|---:|---:|---:|\n";
    for (n, rate) in &r.prefill {
        s += &format!("| prefill {n} tokens | {rate:.1} | {:.2} (on {} tokens) | {:.1}x |\n", r.cpu_tokens_per_s, r.cpu_tokens, rate / r.cpu_tokens_per_s);
    }
    s += &format!("| decode (1 token, KV cache) | {:.1} | | |\n", r.decode_tokens_per_s);
    if r.together > 0 {
        s += &format!(
            "| decode, {} sequences together at their own positions (tokens of all) | {:.1} ({:.2}x one sequence's) | | |\n",
            r.together,
            r.together_tokens_per_s,
            r.together_tokens_per_s / r.decode_tokens_per_s
        );
    }
    if let Some(g) = &r.sampled {
        s += &format!(
            "\n| {} prompts sampled for {} tokens (top 5, temperature 1: fluency's setting) | tokens/s | host thread CPU per step, ms | read back per step, bytes |\n|---|---:|---:|---:|\n",
            g.sequences, g.tokens
        );
        for (what, x) in [
            ("each step queued from the GPU's draw among the top 5 before it comes back", &g.ahead),
            ("each row's top 5 found on the GPU, waited for", &g.candidates),
            ("whole rows read back, the top 5 found on the host", &g.whole_rows),
        ] {
            s += &format!("| {what} | {:.1} | {:.2} | {} |\n", x.tokens_per_s, x.host_cpu_ms_per_step, x.readback_bytes_per_step);
        }
        s += &format!("\nsteps run again where the host's draw contradicted the GPU's: {}\n", g.ahead_steps_redone);
    }
    let g = &r.greedy;
    s += &format!(
        "\n| {} prompt of 16 tokens continued greedily for {} tokens | tokens/s | wall clock per step, ms | per token after the first, ms | host thread CPU per step, ms |\n|---|---:|---:|---:|---:|\n",
        g.sequences, g.tokens
    );
    for (what, x, decode) in [
        ("each step queued from the GPU's choice before it comes back", &g.ahead, g.ahead_decode_ms_per_token),
        ("each step waiting for its token", &g.waiting, g.waiting_decode_ms_per_token),
    ] {
        s += &format!("| {what} | {:.1} | {:.2} | {decode:.2} | {:.2} |\n", x.tokens_per_s, x.wall_ms_per_step, x.host_cpu_ms_per_step);
    }
    s += "\n| wall clock (host work included) | ms | of it the host's own, ms | host thread CPU, ms | host CPU µs per dispatch | first pass at the length, ms |\n|---|---:|---:|---:|---:|---:|\n";
    let per_dispatch = |ms: f64, x: &RuntimeStats| if x.dispatches == 0 || ms == 0.0 { String::new() } else { format!("{:.1}", ms * 1e3 / x.dispatches as f64) };
    for ((((n, ms), (_, host)), (_, cpu)), (_, first)) in r.prefill_wall_ms.iter().zip(&r.prefill_host_ms).zip(&r.prefill_host_cpu_ms).zip(&r.prefill_first_wall_ms) {
        // The counts are the first length's.
        let per = if Some(n) == r.prefill.first().map(|p| &p.0) { per_dispatch(*cpu, &r.prefill_runtime) } else { String::new() };
        s += &format!("| prefill {n} tokens | {ms:.2} | {host:.2} | {cpu:.2} | {per} | {first:.2} |\n");
    }
    s += &format!(
        "| decode, per token | {:.2} | {:.2} | {:.2} | {} | |\n",
        r.decode_wall_ms_per_token,
        r.decode_host_ms_per_token,
        r.decode_host_cpu_ms_per_token,
        per_dispatch(r.decode_host_cpu_ms_per_token, &r.decode_runtime)
    );
    s += "\n| runtime work | dispatches | compute passes | submits | buffers created | bind groups created | readbacks |\n|---|---:|---:|---:|---:|---:|---:|\n";
    let row = |name: String, x: &RuntimeStats| format!("| {name} | {} | {} | {} | {} | {} | {} |\n", x.dispatches, x.passes, x.submits, x.buffers, x.bind_groups, x.readbacks);
    if let Some((n, _)) = r.prefill.first() {
        s += &row(format!("prefill of {n} tokens"), &r.prefill_runtime);
    }
    s += &row("one decoded token".into(), &r.decode_runtime);
    if r.together > 0 {
        s += &row(format!("one step of {} sequences together", r.together), &r.together_runtime);
    }
    let profile = |s: &mut String, what: String, p: &[(String, u64, f64)]| {
        if !p.is_empty() {
            *s += &format!("\n| kernel (REVIVE_PROFILE, {what}) | dispatches | ms |\n|---|---:|---:|\n");
            for (e, n, ms) in p {
                *s += &format!("| {e} | {n} | {ms:.1} |\n");
            }
        }
    };
    if let Some((n, _)) = r.prefill.first() {
        profile(&mut s, format!("prefill of {n} tokens"), &r.prefill_profile);
    }
    profile(&mut s, format!("{} decoded tokens", r.decode_tokens), &r.decode_profile);
    s
}
