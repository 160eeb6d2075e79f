//! `revive edit --method memit|alphaedit|rect|prune|nse|rome --batch N --out DIR` (a journaled
//! session), `revive edit --resume DIR`, `revive journal DIR` and `revive apply`.

use super::Dtype;
use anyhow::Result;
use revive::edit::guard::RankRule;
use revive::edit::hparams::{BatchHparams, BatchMethod};
use revive::edit::request::EditRequest;
use revive::edit::session::{build_guards, build_method, save_delta, MethodSpec, RunOptions, Session};
use revive::eval::counterfact::{BatchMetrics, BatchScope};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::gguf::export::{export_over, EditedType};
use revive::model::gguf::GgmlType;
use revive::model::load::load;
use std::path::Path;

/// Corpus tokens below which a C0 measurably costs retention in sequential batches
/// (docs/experiment.md: at 500 edits, 4,096 tokens kept 171 of 228 controls, 16k 196).
const SMALL_C0: usize = 16_384;

/// What a session writes when it ends.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(super) enum Save {
    /// Only the changed matrices (DIR/delta.safetensors), loadable over the base.
    Delta,
    /// The whole edited model as a Hugging Face safetensors directory (DIR/model/ for a session; DIR itself for single ROME edits).
    Full,
    /// The whole edited model as one GGUF (DIR/model.gguf): over a GGUF base the changed
    /// matrices in --dtype and every other tensor the base's bytes; from a Hugging Face base
    /// written whole, its matrices in --dtype (f32, f16, bf16), as llama.cpp's converter writes one.
    Gguf,
    None,
}

/// The GGUF a `--save gguf` writes over: the base model's file; none for a Hugging Face
/// directory, whose GGUF is written whole.
pub(super) fn gguf_base(spec: &str, save: Save) -> Result<Option<std::path::PathBuf>> {
    if save != Save::Gguf {
        return Ok(None);
    }
    match revive::model::fetch::resolve(spec)? {
        revive::model::fetch::ModelSource::Gguf(path) => Ok(Some(path)),
        // Written whole (revive::model::gguf::convert).
        revive::model::fetch::ModelSource::Safetensors(_) => Ok(None),
    }
}

/// `--batch-metrics`: which of a batch's scores (CounterFact's and EasyEdit's, and the known
/// facts with `--known`) a session records in its journal and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum BatchMetricsArg {
    /// The batch's requests before and after the edit (locality against the model before it).
    Both,
    /// After the edit only (no locality: it needs the model before).
    After,
    /// None: about half of a MEMIT batch's time on a GPU, which an experiment's checkpoints,
    /// scoring their own samples, can spare.
    None,
}

impl BatchMetricsArg {
    pub(super) fn scope(self) -> BatchScope {
        match self {
            BatchMetricsArg::Both => BatchScope::BeforeAndAfter,
            BatchMetricsArg::After => BatchScope::After,
            BatchMetricsArg::None => BatchScope::Off,
        }
    }
}

/// A new session's settings, from `revive edit`.
#[derive(Clone)]
pub(super) struct NewSession {
    pub model: String,
    pub method: String,
    /// The hyper-parameter file and single overrides (`--layer` is ROME's, `layers` the batch
    /// methods').
    pub hp: super::HpArgs,
    pub layers: Option<Vec<usize>>,
    pub requests: Vec<EditRequest>,
    pub batch: usize,
    pub revive: Option<RankRule>,
    pub targets_through_guard: bool,
    pub svd_tol: f64,
    pub max_update_ratio: f64,
    /// Kept in the session, so that a resume writes what the first run asked for.
    pub output: revive::edit::session::SessionOutput,
}

pub(super) fn spec_of(s: &NewSession) -> Result<MethodSpec> {
    let batch_method = match s.method.as_str() {
        "rome" => None,
        m => Some(BatchMethod::from_name(m).ok_or_else(|| anyhow::anyhow!("unknown method '{m}'"))?),
    };
    Ok(match batch_method {
        None => MethodSpec::Rome { hparams: s.hp.resolve_with(s.layers.clone())? },
        Some(m) => {
            let hp = match &s.hp.hparams {
                Some(p) => BatchHparams::load(p)?,
                None => BatchHparams::smollm2(m),
            };
            anyhow::ensure!(hp.method == m, "the hyper-parameters are for {}, not {}", hp.method.name(), m.name());
            s.hp.check_layer_flags(s.layers.as_deref())?;
            let hp = hp.with_overrides(&s.hp.overrides(s.layers.clone()));
            hp.validate("the command line")?;
            MethodSpec::Batch { hparams: hp }
        }
    })
}

/// The output a session's run writes: what this run's command line says, else (resuming) what
/// the session's first run said, else a delta in f32.
pub(super) fn output_of(save: Option<Save>, dtype: Option<Dtype>, stored: Option<&revive::edit::session::SessionOutput>) -> Result<(Save, Dtype)> {
    use clap::ValueEnum;
    let parse = |name: &str, what: &str| anyhow::anyhow!("session.json: '{name}' is not a --{what} value");
    let stored_save = stored.map(|o| Save::from_str(&o.save, true).map_err(|_| parse(&o.save, "save"))).transpose()?;
    let stored_dtype = stored.map(|o| Dtype::from_str(&o.dtype, true).map_err(|_| parse(&o.dtype, "dtype"))).transpose()?;
    Ok((save.or(stored_save).unwrap_or(Save::Delta), dtype.or(stored_dtype).unwrap_or(Dtype::F32)))
}

/// The command line's name of a value.
pub(super) fn name_of(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// The output of a session that writes nothing at its end (a benchmark's, an experiment arm's).
pub(super) fn no_output() -> revive::edit::session::SessionOutput {
    revive::edit::session::SessionOutput { save: name_of(&Save::None), dtype: name_of(&Dtype::F32) }
}

/// Starts a session (`new`, its output given there) or resumes the one in `dir` (writing what
/// `save` and `dtype` say, else what its first run said), runs it to the end, saves.
/// A GPU lost on the way (`--gpu-retries`): the run goes on from the journal on a new device.
pub(super) fn run(choice: BackendChoice, dir: &Path, new: Option<NewSession>, (save, dtype): (Option<Save>, Option<Dtype>), known: Option<&Path>, scope: BatchScope, gpu_retries: u32, max_update: Option<f64>) -> Result<()> {
    let (spec, (save, dtype)) = match &new {
        Some(s) => (s.model.clone(), output_of(None, None, Some(&s.output))?),
        None => {
            let config = Session::read_config(dir)?.0;
            (config.model.clone(), output_of(save, dtype, config.output.as_ref())?)
        }
    };
    let base = gguf_base(&spec, save)?;
    super::common::recovering("revive edit", gpu_retries, |attempt| {
        // A retry resumes what the first attempt wrote; one lost before it wrote the session
        // starts it again.
        let new = if attempt > 0 && Session::config_path(dir).exists() { None } else { new.clone() };
        // What the new GGUF would refuse, refused before the batches run.
        let check = |m: &revive::model::load::LoadedModel| -> Result<()> {
            if save == Save::Gguf && base.is_none() {
                revive::model::gguf::convert::check_new(&m.weights.config, &m.tok, dtype.into(), &dir.join("model.gguf"))?;
            }
            Ok(())
        };
        with_session(choice, dir, new, (known, scope), check, |session, gm, tok, measure, _, _| {
            bound_updates(session, max_update);
            let total = session.batches_total();
            session.run(gm, tok, measure, &RunOptions { progress: true, max_batches: None }, |b| print_batch(b.header, b.after, b.seconds, total))?;
            write_outputs(gm, tok, &session.matrices(), &session.config.base_hash, dir, (save, base.as_deref()), dtype)?;
            print_summary(session);
            Ok(())
        })
    })
}

/// A bound on the updates given again for a resumed session: it applies to the batches still to
/// come (a batch refused under the old bound can then be written), and the journal keeps the
/// session's first setting.
pub(super) fn bound_updates(session: &mut Session, max_update: Option<f64>) {
    if let Some(r) = max_update.filter(|&r| r != session.config.max_update_ratio) {
        eprintln!("updates bounded at {r} × ‖W‖_F from here on (the session began with {})", session.config.max_update_ratio);
        session.config.max_update_ratio = r;
    }
}

/// Opens the session in `dir` (new or resumed), replays its journal, and hands it to `body`
/// with the model, the tokenizer, the metrics, the seconds the statistics (C0) took and the
/// base weights as loaded (the model itself holds the replayed edits). `check` sees the model
/// as loaded, before anything is computed or a new session written, to refuse early what the
/// end would refuse.
pub(super) fn with_session<R>(
    choice: BackendChoice,
    dir: &Path,
    new: Option<NewSession>,
    (known, scope): (Option<&Path>, BatchScope),
    check: impl Fn(&revive::model::load::LoadedModel) -> Result<()>,
    body: impl FnOnce(&mut Session, &mut GpuModel, &revive::model::Tok, &mut BatchMetrics, f64, &revive::model::Weights) -> Result<R>,
) -> Result<R> {
    let gpu = Gpu::new(choice)?;
    super::common::prepare_out(dir)?;
    // A second process on the same session (a relaunch while the first still runs) would
    // write the same journal records and checkpoints as the first.
    let _lock = revive::store::lock_dir(dir, false)?;
    // Bit-identical resumes need the host solves to add in the same order every time.
    faer::set_global_parallelism(faer::Par::Seq);
    let (config, requests, m) = match new {
        Some(s) => {
            let spec = spec_of(&s)?;
            let m = load(&s.model)?;
            check(&m)?;
            super::common::note_shipped_hparams(&m.weights.config, s.hp.hparams.is_some());
            let gm = GpuModel::new(&gpu, &m.weights)?;
            let config = Session::config_for(&gm, &m.tok, &s.model, spec, &s.requests, s.batch, s.revive, s.svd_tol, s.max_update_ratio)?
                .with_targets_through_guard(s.targets_through_guard)?
                .with_output(s.output.clone());
            Session::write_new(dir, &config, &s.requests)?;
            (config, s.requests, m)
        }
        None => {
            let (config, requests) = Session::read_config(dir)?;
            let m = load(&config.model)?;
            check(&m)?;
            (config, requests, m)
        }
    };
    let mut gm = GpuModel::new(&gpu, &m.weights)?;
    eprintln!("model {} on {}; {} on layers {:?}, {} requests in batches of {}", m.source, gpu.label(), config.spec.name(), config.spec.layers(), requests.len(), config.batch);
    let tokens = config.spec.mom2_tokens();
    if tokens < SMALL_C0 && requests.len() > config.batch {
        log::warn!("C0 from {tokens} corpus tokens (--cov-tokens, or the hyper-parameters' mom2_tokens): below {SMALL_C0} it costs retention over many batches (docs/experiment.md, \"How much of the lost retention is the small C0\"); it is computed once and cached");
    }
    let t = std::time::Instant::now();
    let moments = Session::statistics(&gm, &m.tok, &config.spec, true)?;
    let stats_seconds = t.elapsed().as_secs_f64();
    let (method, spaces) = build_method(&gm, &m.tok, &config.spec, &config.templates, &moments)?;
    for s in &spaces {
        eprintln!("AlphaEdit: layer {} null space {} of {} dimensions (eigenvalues < {:e} × λ_max {:.4e})", s.layer, s.null_dim, s.dim, s.threshold, s.lambda_max);
    }
    let guards = match config.revive {
        Some(rule) => build_guards(&gm, &method.matrices(), rule, &revive::linalg::svd::SvdOptions { tol: config.svd_tol, ..Default::default() }, |g| {
            let i = &g.info;
            eprintln!("REVIVE: {} protects k = {} of {} directions ({:.1}% of ‖W‖_F²)", i.matrix, i.k, i.shape[0].min(i.shape[1]), 100.0 * i.energy_fraction);
        })?,
        None => Default::default(),
    };
    if config.targets_through_guard {
        eprintln!("REVIVE: targets optimised through the guard (kept out of the protected output directions)");
    }
    let mut session = Session::open(dir, &gm, config, requests, method, guards)?;
    let known = match known {
        Some(p) => revive::eval::retention::load_facts(p)?,
        None => vec![],
    };
    let mut measure = BatchMetrics::new(known);
    // Before the replay: a batch journaled without its scores is scored there, as asked.
    measure.scope = scope;
    let replayed = session.replay(&mut gm, &m.tok, None, Some(&mut measure))?;
    if replayed > 0 {
        eprintln!("resumed: {replayed} batches replayed from {}", revive::edit::journal::Journal::dir_of(dir).display());
    }
    body(&mut session, &mut gm, &m.tok, &mut measure, stats_seconds, &m.weights)
}

pub(super) fn print_batch(h: &revive::edit::journal::BatchHeader, after: &serde_json::Value, seconds: f64, total: usize) {
    let kept: Vec<String> = h.updates.iter().filter_map(|u| u.filter.map(|f| format!("{:.0}%", 100.0 * f.kept))).collect();
    let kept = if kept.is_empty() { String::new() } else { format!("; REVIVE kept {} of ‖ΔW‖", kept.join(" ")) };
    let passes = nse_passes(&h.method);
    if h.before.is_null() && after.is_null() {
        println!("[batch {}/{total}] requests {}..{}: {seconds:.1} s (not scored: --batch-metrics none){kept}{passes}", h.batch + 1, h.requests[0], h.requests[1]);
        return;
    }
    let pct = |k: &str, v: &serde_json::Value| v[k].as_f64().map(|x| format!(" {k} {:.0}%", 100.0 * x)).unwrap_or_default();
    println!(
        "[batch {}/{total}] requests {}..{}: before{}{} → after{}{}{}; EasyEdit:{}{}{}{}; {:.1} s{kept}{passes}",
        h.batch + 1,
        h.requests[0],
        h.requests[1],
        pct("efficacy", &h.before),
        pct("paraphrase", &h.before),
        pct("efficacy", after),
        pct("paraphrase", after),
        pct("neighborhood", after),
        pct("rewrite_acc", after),
        pct("rephrase_acc", after),
        pct("locality", after),
        pct("portability", after),
        seconds
    );
}

/// NSE's passes in a batch record: how many requests each pass of the layer loop took and the
/// median distance to the targets at the first and last measurement; empty for other methods.
fn nse_passes(record: &serde_json::Value) -> String {
    let Some(passes) = record["passes"].as_array() else { return String::new() };
    let median = |p: &serde_json::Value| {
        let mut d: Vec<f64> = p["distances"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let took: Vec<String> = passes.iter().filter(|p| p["updated"] == true).map(|p| p["active"].as_array().map_or(0, |a| a.len()).to_string()).collect();
    match (passes.first(), passes.last()) {
        (Some(first), Some(last)) => format!("; NSE: {} pass(es) of {} requests, median distance to the targets {:.1} → {:.1}", took.len(), took.join(" then "), median(first), median(last)),
        _ => String::new(),
    }
}

/// The mean of each score right after each batch, over the batches that have it.
fn print_summary(s: &Session) {
    let keys = ["efficacy", "paraphrase", "neighborhood", "rewrite_acc", "rephrase_acc", "locality", "portability"];
    let after: Vec<&serde_json::Value> = s.journal.batches().filter_map(|(_, h)| s.journal.metrics_of(h.batch).map(|m| &m.after)).collect();
    let mut means = vec![];
    for key in keys {
        let v: Vec<f64> = after.iter().filter_map(|a| a[key].as_f64()).collect();
        if !v.is_empty() {
            means.push(format!("{key} {:.1}%", 100.0 * v.iter().sum::<f64>() / v.len() as f64));
        }
    }
    println!("{} batches in {}; mean right after each batch: {}", s.batches_done(), s.dir.display(), if means.is_empty() { "no scores".into() } else { means.join(", ") });
}

/// `save` with the GGUF a `Save::Gguf` writes over ([`gguf_base`]).
fn write_outputs(gm: &GpuModel, tok: &revive::model::Tok, matrices: &[String], base_hash: &str, dir: &Path, (save, base): (Save, Option<&Path>), dtype: Dtype) -> Result<()> {
    match save {
        Save::Delta => {
            let p = dir.join("delta.safetensors");
            save_delta(gm, matrices, base_hash, &p)?;
            println!("changed matrices written to {}", p.display());
        }
        Save::Full => {
            let p = dir.join("model");
            revive::model::load::save(&gm.to_weights()?, tok, &p, dtype.into())?;
            println!("edited model written to {}", p.display());
        }
        Save::Gguf => write_gguf(gm, tok, base, &dir.join("model.gguf"), dtype)?,
        Save::None => {}
    }
    Ok(())
}

/// The model on the GPU as a GGUF at `path`: over its GGUF `base`, the changed matrices in
/// `dtype` and the rest the base's bytes; without one (a Hugging Face base), written whole with
/// its matrices in `dtype`.
pub(super) fn write_gguf(gm: &GpuModel, tok: &revive::model::Tok, base: Option<&Path>, path: &Path, dtype: Dtype) -> Result<()> {
    let ty: GgmlType = dtype.into();
    match base {
        Some(base) => {
            let e = export_over(base, &gm.to_weights()?, EditedType::As(ty), path)?;
            println!("edited model written to {} ({} tensors rewritten in {ty:?}, {} copied from {})", path.display(), e.rewritten.len(), e.copied, base.display());
        }
        None => {
            let name = path.parent().and_then(|d| d.file_name()).map_or("revive".into(), |n| n.to_string_lossy().into_owned());
            let w = revive::model::gguf::convert::write_new(&gm.to_weights()?, tok, ty, &name, path)?;
            println!("edited model written to {} (a new {} GGUF, its matrices in {ty:?}; {} tensors, {:.1} MB)", path.display(), w.architecture, w.tensors, w.bytes as f64 / 1e6);
        }
    }
    Ok(())
}

/// `revive journal DIR`: the batches of a session.
pub(super) fn journal(dir: &Path, json: bool) -> Result<()> {
    let (config, requests) = Session::read_config(dir)?;
    let j = revive::edit::journal::Journal::read(dir)?;
    if json {
        let rows: Vec<_> = j.batches().map(|(e, h)| serde_json::json!({ "file": e.path, "header": h, "after": j.metrics_of(h.batch).map(|m| &m.after) })).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let through = if config.targets_through_guard { ", targets through the guard" } else { "" };
    println!("{}: {} on {} (layers {:?}), {} requests in batches of {}, REVIVE {:?}{through}", dir.display(), config.spec.name(), config.model, config.spec.layers(), requests.len(), config.batch, config.revive);
    println!("{:>6} {:>12} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}  updates", "batch", "requests", "seconds", "eff before", "eff after", "paraphr.", "neighb.", "locality", "portab.");
    for (_, h) in j.batches() {
        let after = j.metrics_of(h.batch).map(|m| m.after.clone()).unwrap_or_default();
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{:.0}%", 100.0 * x));
        let ups: Vec<String> = h.updates.iter().map(|u| format!("{} ‖ΔW‖ {:.3}{}", u.matrix, u.norm, u.rank.map_or(" dense".into(), |r| format!(" rank {r}")))).collect();
        println!(
            "{:>6} {:>12} {:>8.1} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}  {}",
            h.batch,
            format!("{}..{}", h.requests[0], h.requests[1]),
            h.seconds,
            f(&h.before, "efficacy"),
            f(&after, "efficacy"),
            f(&after, "paraphrase"),
            f(&after, "neighborhood"),
            f(&after, "locality"),
            f(&after, "portability"),
            ups.join(", ")
        );
    }
    let total = requests.len().div_ceil(config.batch);
    if j.n_batches() < total {
        println!("{} of {total} batches done: `revive edit --resume {}` continues", j.n_batches(), dir.display());
    }
    Ok(())
}

/// `revive apply -m BASE --journal DIR [--upto B] --out OUT`: the model at any batch.
pub(super) fn apply(choice: BackendChoice, model: &str, dir: &Path, upto: Option<usize>, out: &Path, save: Save, dtype: Dtype) -> Result<()> {
    let (config, requests) = Session::read_config(dir)?;
    let base = gguf_base(model, save)?;
    super::common::prepare_out(out)?;
    let gpu = Gpu::new(choice)?;
    faer::set_global_parallelism(faer::Par::Seq);
    let m = load(model)?;
    let mut gm = GpuModel::new(&gpu, &m.weights)?;
    let method = Box::new(revive::edit::session::ReplayOnly { matrices: config.spec.matrices() });
    let mut session = Session::open_to_read(dir, &gm, config, requests, method)?;
    if let Some(b) = upto.filter(|&b| b > session.batches_done()) {
        let n = session.batches_done();
        anyhow::bail!("--upto {b}: the journal in {} holds {n} batch{}", dir.display(), if n == 1 { "" } else { "es" });
    }
    let n = session.replay(&mut gm, &m.tok, upto, None)?;
    write_outputs(&gm, &m.tok, &session.matrices(), &session.config.base_hash, out, (save, base.as_deref()), dtype)?;
    println!("{n} of {} batches applied to {model}", session.batches_done());
    Ok(())
}
