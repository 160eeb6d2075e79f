//! `revive edit`: facts edited into the model (ROME, optionally through the REVIVE guard), the
//! probabilities before and after, the edited model and a JSON record of every edit.

use super::common::{edit_setup, make_guard};
use super::session::Save;
use super::{Dtype, HpArgs, ReviveArgs};
use anyhow::{Context, Result};
use revive::gpu::BackendChoice;

#[derive(clap::Args)]
pub(super) struct EditArgs {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// The editing method: ROME one fact at a time, or a batch method.
    #[arg(long, default_value = "rome", value_parser = method_names())]
    method: String,
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
    /// Leave out the records of --edits that are not well-formed (counted and named in a
    /// warning) instead of refusing the file.
    #[arg(long, requires = "edits")]
    skip_bad: bool,
    #[command(flatten)]
    hp: HpArgs,
    #[command(flatten)]
    revive: ReviveArgs,
    /// Output directory: the edited model and edits.json.
    #[arg(long, default_value = "runs/edit")]
    out: std::path::PathBuf,
    /// Do not write the edited weights (the record is still written); the same as --save none.
    #[arg(long, conflicts_with = "save")]
    no_save: bool,
    /// Precision of the saved weights (default f32; a resumed session: its first run's).
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Edit in batches of N requests in a journaled session in --out (the batch methods —
    /// MEMIT, AlphaEdit, RECT, PRUNE, NSE — always run as sessions; default batch 1 for them).
    #[arg(long)]
    batch: Option<usize>,
    /// Continue the session in DIR after a crash or kill (its settings come from DIR).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["subject", "edits", "batch"])]
    resume: Option<std::path::PathBuf>,
    /// The edited layers of a batch method, e.g. 3,4,5,6,7 (ROME's one layer, as --layer).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// What is written at the end: the changed matrices (delta; a session's default), the whole
    /// model as a Hugging Face directory (full; a single ROME edit's default) or as a GGUF
    /// (DIR/model.gguf: over a GGUF base the edited matrices in --dtype and the rest the base's
    /// bytes; from a Hugging Face base written whole, its matrices in --dtype).
    /// A session resumed with --resume writes what its first run's --save said, unless given.
    #[arg(long, value_enum)]
    save: Option<super::session::Save>,
    /// Refuse an update with ‖ΔW‖_F (as written, after REVIVE's filter) above this multiple of
    /// ‖W‖_F, an exploding batch (default 2). With --resume it replaces the session's bound
    /// from then on: the batches already written passed under the old one.
    #[arg(long, value_name = "RATIO", value_parser = super::common::positive_ratio)]
    max_update: Option<f64>,
    /// Known facts checked after every batch of a session (retention).
    #[arg(long)]
    known: Option<std::path::PathBuf>,
    /// Which scores each batch of a session records: before and after the edit, after only,
    /// or none.
    #[arg(long, value_enum, default_value_t = super::session::BatchMetricsArg::Both)]
    batch_metrics: super::session::BatchMetricsArg,
    /// When the GPU is lost during a session (a driver reset, a watchdog), go on from the
    /// journal on a new device up to this many times.
    #[arg(long, value_name = "N", default_value_t = super::common::GPU_RETRIES)]
    gpu_retries: u32,
}

/// ROME and the batch methods' names, as `--method` accepts them.
pub(super) fn method_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(std::iter::once("rome").chain(revive::edit::hparams::BatchMethod::ALL.iter().map(|m| m.name())))
}

pub(super) fn run(choice: BackendChoice, a: EditArgs) -> Result<()> {
    use revive::edit::{request, run::{run_rome, Guarding, RunRecord}};
    if let Some(t) = a.revive.revive {
        anyhow::ensure!(t > 0.0 && t <= 1.0, "--revive {t}: τ is a fraction of the energy, in (0, 1]");
    }
    let session_save = if a.no_save { Some(Save::None) } else { a.save };
    if let Some(dir) = &a.resume {
        return super::session::run(choice, dir, None, (session_save, a.dtype), a.known.as_deref(), a.batch_metrics.scope(), a.gpu_retries, a.max_update);
    }
    let requests = match (&a.edits, &a.subject) {
        (Some(path), _) => request::load_requests_with(path, a.skip_bad)?,
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
    anyhow::ensure!(!requests.is_empty(), "there are no requests to edit (the list is empty, or --limit is 0)");
    if a.resume.is_none() {
        super::common::prepare_out(&a.out)?;
    }
    if a.method != "rome" || a.batch.is_some() {
        let new = super::session::NewSession {
            model: a.model.clone(),
            method: a.method.clone(),
            hp: a.hp.clone(),
            layers: a.layers.clone(),
            requests: requests.to_vec(),
            batch: a.batch.unwrap_or(1),
            revive: a.revive.rule(),
            targets_through_guard: a.revive.through_guard(false)?,
            svd_tol: a.revive.svd_tol,
            max_update_ratio: a.max_update.unwrap_or(revive::edit::update::DEFAULT_MAX_UPDATE_RATIO),
            output: {
                let (save, dtype) = super::session::output_of(session_save, a.dtype, None)?;
                revive::edit::session::SessionOutput { save: super::session::name_of(&save), dtype: super::session::name_of(&dtype) }
            },
        };
        return super::session::run(choice, &a.out, Some(new), (session_save, a.dtype), a.known.as_deref(), a.batch_metrics.scope(), a.gpu_retries, None);
    }
    // One ROME edit after another, outside a session: the whole model, as a directory or a GGUF.
    let save = match (a.no_save, a.save) {
        (true, _) | (false, Some(Save::None)) => Save::None,
        (false, None | Some(Save::Full)) => Save::Full,
        (false, Some(Save::Gguf)) => Save::Gguf,
        (false, Some(Save::Delta)) => anyhow::bail!("--save delta is a session's (--batch N); ROME edits outside a session save the whole model: --save full or gguf"),
    };
    let gguf_base = super::session::gguf_base(&a.model, save)?;
    let hp = a.hp.resolve_with(a.layers.clone())?;
    let targets_through = a.revive.through_guard(false)?;
    let start = std::time::Instant::now();
    let (m, gpu, gm, cov, covariance_seconds) = edit_setup(choice, &a.model, &hp, a.hp.hparams.is_some(), |m| {
        if save == Save::Gguf && gguf_base.is_none() {
            // What the new GGUF would refuse, refused before the edits run.
            revive::model::gguf::convert::check_new(&m.weights.config, &m.tok, a.dtype.unwrap_or(Dtype::F32).into(), &a.out.join("model.gguf"))?;
        }
        Ok(())
    })?;
    let n = requests.len();
    let guard = a.revive.rule().map(|rule| make_guard(&gm, hp.layer, rule, &a.revive.svd())).transpose()?;
    let done = std::cell::Cell::new(0);
    let (templates, edits) = run_rome(&gm, &m.tok, requests, &hp, &cov, guard.as_ref().map(|guard| Guarding { guard, targets_through }), true, |_| Ok(None), |r| {
        done.set(done.get() + 1);
        print_edit(r, n)
    })
    .map_err(|e| after_a_loss(e.into(), done.get()))?;
    let saved = || -> Result<()> {
        match (save, &gguf_base) {
            (Save::Full, _) => revive::model::load::save(&gm.to_weights()?, &m.tok, &a.out, a.dtype.unwrap_or(Dtype::F32).into())?,
            (Save::Gguf, base) => super::session::write_gguf(&gm, &m.tok, base.as_deref(), &a.out.join("model.gguf"), a.dtype.unwrap_or(Dtype::F32))?,
            _ => {}
        }
        Ok(())
    };
    saved().map_err(|e| after_a_loss(e, n))?;
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
        if save == Save::None { "the record" } else { "the edited model and the record" },
        a.out.display()
    );
    Ok(())
}

pub(super) fn print_edit(r: &revive::edit::run::EditRecord, n: usize) {
    let q = &r.request;
    let was = q.target_true.as_deref().map(|t| format!(" (was {t:?})")).unwrap_or_default();
    println!("[{}/{n}] {} → {:?}{was}", r.index + 1, q.full_prompt(), q.target_new);
    for (when, m) in [("before", &r.before), ("after ", &r.after)] {
        let truth = m.true_.as_ref().map(|t| format!("   P(true) {:.4}", t.p)).unwrap_or_default();
        let extra = [("paraphrase", m.paraphrase), ("neighborhood", m.neighborhood), ("rewrite_acc", Some(m.rewrite_acc)), ("rephrase_acc", m.rephrase_acc), ("locality", m.locality), ("portability", m.portability)]
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

/// `e`, and where it is a lost GPU after `done` ROME edits outside a session, what went with the
/// device and how to keep a sequence across a loss.
fn after_a_loss(e: anyhow::Error, done: usize) -> anyhow::Error {
    if done == 0 || !super::common::caused_by(&e, |c| matches!(c, revive::Error::DeviceLost { .. })) {
        return e;
    }
    e.context(format!("the {done} edit(s) finished before the loss went with the device: run a sequence of edits as a journaled session (`--batch 1`), which keeps every finished edit and goes on by itself after a loss"))
}
