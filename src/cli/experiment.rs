//! `revive experiment`: the collapse curves. Every arm (a method, with or without REVIVE at
//! some τ) edits the same requests in the same order from the same original weights as a
//! journaled session in its own directory, and at every checkpoint (each `--every` edits) the
//! model is measured the same way (`revive::eval::experiment`). Arms run one after another,
//! or one per process with `--arm` (for GNU parallel, a Slurm array, Ray: any scheduler), and
//! `--merge` builds the table and plots from their directories. Re-running the command
//! continues where it stopped (the journal and the checkpoints are durable).

use super::session::{print_batch, with_session, NewSession};
use super::HpArgs;
use anyhow::{bail, ensure, Context, Result};
use revive::edit::guard::{guard_dir, RankRule, SpectralGuard};
use revive::edit::session::{RunOptions, Session};
use revive::eval::experiment::{append_checkpoint, read_checkpoints, Checkpoint, Measures};
use revive::eval::general::{next_token_logprobs, prose_set};
use revive::gpu::BackendChoice;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// Methods, comma-separated: memit, alphaedit, rect, prune, nse, rome.
    #[arg(long, value_delimiter = ',', default_value = "memit,alphaedit")]
    methods: Vec<String>,
    /// REVIVE settings, comma-separated: none, τ (energy fraction), or τ+through (targets
    /// optimised through the guard), e.g. none,0.5,0.8,0.5+through.
    #[arg(long, value_delimiter = ',', default_value = "none,0.5")]
    revive: Vec<String>,
    /// CounterFact-layout edit requests (JSON, gzip or not).
    #[arg(long, default_value = "assets/facts/geo/edits.json.gz")]
    edits: PathBuf,
    /// Only the first N requests.
    #[arg(long)]
    limit: Option<usize>,
    /// Leave out the records of --edits that are not well-formed (counted and named in a
    /// warning) instead of refusing the file; the plan's hash is of the requests kept.
    #[arg(long)]
    skip_bad: bool,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// A checkpoint every N edits (a multiple of --batch); one at 0 and one at the end too.
    #[arg(long, default_value_t = 500)]
    every: usize,
    /// The experiment's directory: one subdirectory per arm, the table and the plots (default
    /// runs/experiment; with --merge of one experiment directory, that directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only this arm, e.g. memit/0.5 or alphaedit/none (one process per arm).
    #[arg(long)]
    arm: Option<String>,
    /// Build the table and plots from these experiment or arm directories and stop.
    #[arg(long, num_args = 1.., value_name = "DIR")]
    merge: Option<Vec<PathBuf>>,
    /// Time one batch and one checkpoint of the first arm, estimate the whole run, and stop.
    #[arg(long)]
    dry_run: bool,
    /// Stop cleanly (after the batch or checkpoint under way) once this many minutes have
    /// passed; running the same command again continues.
    #[arg(long, value_name = "MINUTES")]
    stop_after: Option<f64>,
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    #[command(flatten)]
    hp: HpArgs,
    /// Retention: facts the unedited model answers, checked at every checkpoint.
    #[arg(long, default_value = "assets/facts/geo/known.json")]
    known: PathBuf,
    /// Check N of the known facts, spread evenly over the file: it lists the largest cities
    /// first, whose answers lean to a few countries (China is 45 of the first 100, 121 of 600),
    /// so a prefix would measure little more than one neighbourhood.
    #[arg(long)]
    known_limit: Option<usize>,
    /// Requests sampled (evenly) for the CounterFact scores of a checkpoint (0: all).
    #[arg(long, default_value_t = 200)]
    sample: usize,
    /// Held-out prose for perplexity and agreement (default: the shipped Persuasion excerpt).
    #[arg(long)]
    prose: Option<PathBuf>,
    /// Tokens of held-out prose whose perplexity is measured (0: none).
    #[arg(long, default_value_t = 20480)]
    ppl_tokens: usize,
    /// Prompts (24 tokens of prose each) on which the next-token distribution is compared with
    /// the unedited model's.
    #[arg(long, default_value_t = 64)]
    agreement_prompts: usize,
    /// Generation prompts whose sampled continuations score fluency, and their length.
    #[arg(long, default_value_t = 8)]
    fluency_prompts: usize,
    #[arg(long, default_value_t = 64)]
    fluency_tokens: usize,
    /// The rank rule (energy fraction) of the spectral diagnostics of every edited matrix.
    #[arg(long, default_value_t = 0.5)]
    spectral_tau: f64,
    /// No spectral diagnostics (they take a top-k SVD per edited matrix per checkpoint).
    #[arg(long)]
    no_spectral: bool,
    /// Refuse an update with ‖ΔW‖_F (after REVIVE's filter) above this multiple of ‖W‖_F
    /// (default 2); given again on a later call, it applies from there on to every arm.
    #[arg(long, value_name = "RATIO", value_parser = super::common::positive_ratio)]
    max_update: Option<f64>,
    /// Which scores each batch records besides the checkpoints: its requests before and after
    /// the edit, after only, or none (the checkpoints score their own samples either way).
    /// Not one of the experiment's settings: a resumed run may change it.
    #[arg(long, value_enum, default_value_t = super::session::BatchMetricsArg::Both)]
    batch_metrics: super::session::BatchMetricsArg,
    /// When the GPU is lost during an arm (a driver reset, a watchdog), go on from its journal
    /// on a new device up to this many times per arm.
    #[arg(long, value_name = "N", default_value_t = super::common::GPU_RETRIES)]
    gpu_retries: u32,
}

/// What fixes an experiment's results; written once to OUT/experiment.json and checked on
/// every later call, so arms and resumed runs never mix settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    model: String,
    methods: Vec<String>,
    revive: Vec<String>,
    edits: String,
    edits_sha256: String,
    requests: usize,
    batch: usize,
    every: usize,
    layers: Option<Vec<usize>>,
    steps: Option<usize>,
    templates: Option<usize>,
    cov_tokens: Option<usize>,
    hparams: Option<String>,
    known_facts: usize,
    sample: usize,
    ppl_tokens: usize,
    agreement_prompts: usize,
    fluency_prompts: usize,
    fluency_tokens: usize,
    spectral_tau: Option<f64>,
    /// 2 since 2026-12-07, when the four settings below were first recorded; a plan written
    /// before (1) lacks them, so they are compared only between plans that both record them.
    #[serde(default = "first_plan_version")]
    version: u32,
    #[serde(default)]
    layer: Option<usize>,
    #[serde(default)]
    target_loss: Option<String>,
    #[serde(default)]
    prose: Option<String>,
    #[serde(default)]
    known_sha256: Option<String>,
}

const PLAN_VERSION: u32 = 2;

fn first_plan_version() -> u32 {
    1
}

impl Plan {
    /// The settings in which `other` differs from this plan, as "field: this against other";
    /// `same_arms`: whether the lists of methods and REVIVE settings count (not when merging
    /// arms that separate calls listed differently).
    fn differences(&self, other: &Plan, same_arms: bool) -> Vec<String> {
        let both_record = self.version >= PLAN_VERSION && other.version >= PLAN_VERSION;
        let strip = |p: &Plan| {
            let mut p = p.clone();
            if !same_arms {
                (p.methods, p.revive) = (vec![], vec![]);
            }
            if !both_record {
                (p.version, p.layer, p.target_loss, p.prose, p.known_sha256) = (0, None, None, None, None);
            }
            serde_json::to_value(p).expect("a plan serialises")
        };
        let (a, b) = (strip(self), strip(other));
        let (a, b) = (a.as_object().expect("an object"), b.as_object().expect("an object"));
        let null = serde_json::Value::Null;
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("{k}: {} against {}", a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null))).collect()
    }
}

#[derive(Debug, Clone)]
struct Arm {
    name: String,
    method: String,
    revive: Option<f64>,
    targets_through_guard: bool,
}

fn arms(methods: &[String], revive: &[String]) -> Result<Vec<Arm>> {
    let mut out = vec![];
    for m in methods {
        ensure!(m == "rome" || revive::edit::hparams::BatchMethod::from_name(m).is_some(), "unknown method '{m}' in --methods");
        for r in revive {
            let (tau, through) = match r.as_str() {
                "none" => (None, false),
                t => {
                    let (t, through) = t.strip_suffix("+through").map_or((t, false), |t| (t, true));
                    let tau: f64 = t.parse().with_context(|| format!("--revive: '{r}' is none, a number or a number+through"))?;
                    ensure!(tau > 0.0 && tau <= 1.0, "--revive {tau}: τ is a fraction of the energy, in (0, 1]");
                    (Some(tau), through)
                }
            };
            ensure!(!out.iter().any(|a: &Arm| a.name == format!("{m}-{r}")), "--revive {r} is given twice");
            out.push(Arm { name: format!("{m}-{r}"), method: m.clone(), revive: tau, targets_through_guard: through });
        }
    }
    Ok(out)
}

impl Args {
    /// Where the experiment lives (merges choose their own default).
    fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs/experiment"))
    }
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    if let Some(dirs) = &a.merge {
        return merge(dirs, a.out.as_deref());
    }
    if let Some(m) = a.stop_after {
        ensure!((0.0..1e9).contains(&m), "--stop-after {m}: a number of minutes, 0 or more");
    }
    let out = a.out();
    ensure!(a.batch > 0 && a.every > 0 && a.every.is_multiple_of(a.batch), "--every {} must be a positive multiple of --batch {}", a.every, a.batch);
    let arms = arms(&a.methods, &a.revive)?;
    // Before any arm starts its GPU and writes its directory: a wrong -m fails every arm alike.
    revive::model::fetch::resolve(&a.model)?;
    let selected: Vec<Arm> = match &a.arm {
        Some(sel) => {
            let name = sel.replace('/', "-");
            let arm = arms.iter().find(|x| x.name == name).with_context(|| format!("--arm {sel}: not one of {}", arms.iter().map(|x| x.name.replace('-', "/")).collect::<Vec<_>>().join(", ")))?;
            vec![arm.clone()]
        }
        None => arms.clone(),
    };
    let requests = revive::edit::request::load_requests_with(&a.edits, a.skip_bad)?;
    let requests = requests[..a.limit.unwrap_or(requests.len()).min(requests.len())].to_vec();
    ensure!(!requests.is_empty(), "{}: no edit requests to run", a.edits.display());
    let known = load_known(&a)?;
    let plan = Plan {
        model: a.model.clone(),
        methods: a.methods.clone(),
        revive: a.revive.clone(),
        edits: a.edits.display().to_string(),
        edits_sha256: revive::store::sha256_hex(&serde_json::to_vec(&requests)?),
        requests: requests.len(),
        batch: a.batch,
        every: a.every,
        layers: a.layers.clone(),
        steps: a.hp.steps,
        templates: a.hp.templates,
        cov_tokens: a.hp.cov_tokens,
        hparams: a.hp.hparams.as_ref().map(|p| p.display().to_string()),
        known_facts: known.len(),
        sample: a.sample,
        ppl_tokens: a.ppl_tokens,
        agreement_prompts: a.agreement_prompts,
        fluency_prompts: a.fluency_prompts,
        fluency_tokens: a.fluency_tokens,
        spectral_tau: (!a.no_spectral).then_some(a.spectral_tau),
        version: PLAN_VERSION,
        layer: a.hp.layer,
        target_loss: a.hp.target_loss.map(|t| super::session::name_of(&t)),
        prose: a.prose.as_ref().map(|p| p.display().to_string()),
        known_sha256: Some(revive::store::sha256_hex(&serde_json::to_vec(&known)?)),
    };
    if a.dry_run {
        return dry_run(choice, &a, &plan, &arms, &selected[0], &requests, known);
    }
    super::common::prepare_out(&out)?;
    check_plan(&out, &plan)?;
    let started = Instant::now();
    let deadline = a.stop_after.map(|m| started + std::time::Duration::from_secs_f64(m * 60.0));
    let (mut finished, mut failed) = (0, vec![]);
    for arm in &selected {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        println!("== arm {} ({} requests, batches of {}, a checkpoint every {} edits) ==", arm.name, requests.len(), a.batch, a.every);
        // An arm that fails (a batch refused as exploding, say) ends there; the others are
        // independent of it and still run.
        match super::common::recovering(&format!("arm {}", arm.name), a.gpu_retries, |_| run_arm(choice, &a, arm, &requests, known.clone(), deadline)) {
            Ok(done) => finished += usize::from(done),
            Err(e) => {
                eprintln!("arm {} stopped: {e:#}", arm.name);
                failed.push((arm.name.clone(), e));
            }
        }
    }
    let merged = if arms.iter().any(|x| revive::eval::experiment::checkpoints_path(&out.join(&x.name)).exists()) {
        match merge(std::slice::from_ref(&out), Some(&out)) {
            Ok(()) => true,
            // An arm's own error says more than the merge's; it goes first.
            Err(e) if !failed.is_empty() => {
                eprintln!("the table and plots were not written: {e:#}");
                false
            }
            Err(e) => return Err(e),
        }
    } else {
        false
    };
    if let Some((name, e)) = failed.into_iter().next() {
        let merged = if merged { format!("; the checkpoints so far are merged in {}", out.display()) } else { String::new() };
        return Err(e.context(format!("arm {name} did not run to its end{merged}")));
    }
    if finished < selected.len() {
        println!("stopped before the end: run the same command again to continue");
    }
    Ok(())
}

fn load_known(a: &Args) -> Result<Vec<revive::eval::retention::Fact>> {
    let known = revive::eval::retention::load_facts(&a.known)?;
    let n = a.known_limit.unwrap_or(known.len());
    Ok(revive::eval::experiment::spread(known.len(), n).into_iter().take(n).map(|i| known[i].clone()).collect())
}

fn check_plan(out: &Path, plan: &Plan) -> Result<()> {
    if let Some(old) = plan_of(out)? {
        let differ = old.differences(plan, true);
        if !differ.is_empty() {
            bail!("{} holds an experiment with other settings (there against now: {}); use another --out, or the same settings to continue it", out.display(), differ.join("; "));
        }
        return Ok(());
    }
    revive::store::write_durable(&out.join("experiment.json"), serde_json::to_string_pretty(plan)?.as_bytes())?;
    Ok(())
}

fn new_session(a: &Args, arm: &Arm, requests: &[revive::edit::request::EditRequest]) -> NewSession {
    NewSession {
        model: a.model.clone(),
        method: arm.method.clone(),
        hp: a.hp.clone(),
        layers: a.layers.clone(),
        requests: requests.to_vec(),
        batch: a.batch,
        revive: arm.revive.map(RankRule::Energy),
        targets_through_guard: arm.targets_through_guard,
        svd_tol: revive::linalg::svd::SvdOptions::default().tol,
        max_update_ratio: a.max_update.unwrap_or(revive::edit::update::DEFAULT_MAX_UPDATE_RATIO),
        output: super::session::no_output(),
    }
}

/// The unedited model, for the references checkpoints compare with: the session's own model
/// while no batch is applied, else a copy of the base weights, uploaded once and only if a
/// reference has to be measured (a resumed arm finds them in its directory).
struct Unedited<'a> {
    gm: &'a revive::model::forward::GpuModel,
    base: &'a revive::model::Weights,
    base_now: bool,
    copy: std::cell::OnceCell<revive::model::forward::GpuModel>,
}

impl Unedited<'_> {
    fn model(&self) -> Result<&revive::model::forward::GpuModel> {
        if self.base_now {
            return Ok(self.gm);
        }
        if self.copy.get().is_none() {
            let _ = self.copy.set(revive::model::forward::GpuModel::new(self.gm.gpu(), self.base)?);
        }
        Ok(self.copy.get().expect("set above"))
    }
}

/// The unedited model's next-token log-probabilities on the agreement prompts, kept in the arm
/// directory (the arm may resume after edits were made).
fn reference_logprobs(dir: &Path, unedited: &Unedited, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let path = dir.join("reference-logprobs.safetensors");
    let key = revive::store::sha256_hex(&serde_json::to_vec(prompts)?);
    let fields = [("format", "revive-reference-v1".to_string()), ("prompts_sha256", key)];
    if let Ok(st) = revive::store::load_cache(&path, &fields) {
        let shape = st.shape("logprobs").context("reference file without logprobs")?;
        let flat = st.tensor("logprobs", &shape)?;
        return Ok(flat.chunks(shape[1]).map(<[f32]>::to_vec).collect());
    }
    let rows = next_token_logprobs(unedited.model()?, prompts)?;
    let flat: Vec<f32> = rows.concat();
    let f: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, v.clone())).collect();
    revive::store::save(&path, &f, &[("logprobs", vec![rows.len(), rows[0].len()], &flat)])?;
    Ok(rows)
}

/// Where the checkpoint after `b` batches starts its recent edits and how many edits it has
/// seen, if `b` is a checkpoint (every `--every` edits, and at the end).
fn checkpoint_at(a: &Args, b: usize, total: usize, n: usize) -> Option<(usize, usize)> {
    let per_ckpt = a.every / a.batch;
    let edits = (b * a.batch).min(n);
    let recent_from = (b.saturating_sub(1) / per_ckpt) * per_ckpt * a.batch;
    (b.is_multiple_of(per_ckpt) || b == total).then_some((recent_from.min(edits), edits))
}

/// The unedited model's locality predictions of every request a checkpoint of this arm will
/// sample, kept in the arm directory (the arm may resume after edits were made).
fn locality_reference(dir: &Path, unedited: &Unedited, tok: &revive::model::Tok, requests: &[revive::edit::request::EditRequest], wanted: &std::collections::BTreeSet<usize>) -> Result<std::collections::BTreeMap<usize, Vec<Vec<u32>>>> {
    #[derive(Serialize, Deserialize)]
    struct Cached {
        requests_sha256: String,
        tops: std::collections::BTreeMap<usize, Vec<Vec<u32>>>,
    }
    let path = dir.join("reference-locality.json");
    let chosen: Vec<(usize, &revive::edit::request::EditRequest)> = wanted.iter().map(|&i| (i, &requests[i])).collect();
    // The start tokens are part of what was measured (keys of arms without any are unchanged).
    let key = match tok.start() {
        [] => revive::store::sha256_hex(&serde_json::to_vec(&chosen)?),
        start => revive::store::sha256_hex(&serde_json::to_vec(&(&chosen, start))?),
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<Cached>(&text) {
            Ok(c) if c.requests_sha256 == key => return Ok(c.tops),
            Ok(_) => {}
            Err(e) => log::warn!("{}: not a locality reference ({e}); measuring it again", path.display()),
        }
    }
    let reqs: Vec<_> = chosen.iter().map(|(_, r)| (*r).clone()).collect();
    let tops = revive::eval::counterfact::locality_tops(unedited.model()?, tok, &reqs)?;
    let cached = Cached { requests_sha256: key, tops: wanted.iter().copied().zip(tops).collect() };
    revive::store::write_durable(&path, &serde_json::to_vec(&cached)?)?;
    Ok(cached.tops)
}

fn measures(a: &Args, dir: &Path, session: &Session, gm: &revive::model::forward::GpuModel, tok: &revive::model::Tok, base: &revive::model::Weights, known: Vec<revive::eval::retention::Fact>) -> Result<Measures> {
    let unedited = Unedited { gm, base, base_now: session.batches_done() == 0, copy: Default::default() };
    let prose = if a.ppl_tokens > 0 || a.agreement_prompts > 0 { Some(prose_set(tok, a.prose.as_deref(), a.ppl_tokens, 128, a.agreement_prompts, 24)?) } else { None };
    let reference = match &prose {
        Some(p) if !p.agreement.is_empty() => Some(reference_logprobs(dir, &unedited, &p.agreement)?),
        _ => None,
    };
    let mut spectral = vec![];
    if !a.no_spectral {
        let opts = revive::linalg::svd::SvdOptions::default();
        for name in session.matrices() {
            let t = base.tensors.get(&name).with_context(|| format!("the base model has no {name}"))?;
            let w0 = gm.gpu().upload(&t.data, &t.shape)?;
            let (g, _) = SpectralGuard::cached(gm.gpu(), &w0, &name, RankRule::Energy(a.spectral_tau), &opts, &guard_dir())?;
            spectral.push((name, w0, Measures::basis_of(&g)));
        }
    }
    let mut m = Measures {
        sample: a.sample,
        known,
        prose,
        reference,
        fluency_prompts: a.fluency_prompts,
        fluency_tokens: a.fluency_tokens,
        spectral,
        svd: revive::linalg::svd::SvdOptions::default(),
        locality_reference: Default::default(),
    };
    let (total, n) = (session.batches_total(), session.requests.len());
    let wanted = (0..=total).filter_map(|b| checkpoint_at(a, b, total, n)).flat_map(|(from, edits)| m.sampled(from, edits).concat()).collect();
    m.locality_reference = locality_reference(dir, &unedited, tok, &session.requests, &wanted)?;
    Ok(m)
}

fn print_checkpoint(c: &Checkpoint) {
    let pct = |v: Option<f64>| v.map_or("–".into(), |x| format!("{:.0}%", 100.0 * x));
    let all = c.all;
    println!(
        "checkpoint {} edits: efficacy {} (last {}), paraphrase {}, neighbourhood {}; EasyEdit: rewrite {}, rephrase {}, locality {}, portability {}; known {}; perplexity {}; KL {}; fluency {}; {:.0} s to measure",
        c.edits,
        pct(all.and_then(|s| s.efficacy)),
        pct(c.recent.and_then(|s| s.efficacy)),
        pct(all.and_then(|s| s.paraphrase)),
        pct(all.and_then(|s| s.neighborhood)),
        pct(all.and_then(|s| s.rewrite_acc)),
        pct(all.and_then(|s| s.rephrase_acc)),
        pct(all.and_then(|s| s.locality)),
        pct(all.and_then(|s| s.portability)),
        c.known_correct.map_or("–".into(), |k| format!("{k}/{}", c.known_total))
            + &c.known_loss.filter(|l| l.lost > 0).map_or(String::new(), |l| format!(" (of the {} lost, {} share an edited fact's old answer, {} now answer an edit's new target)", l.lost, l.sharing_an_edited_answer, l.to_an_edit_target))
            + &if c.known_by_relation.len() > 1 {
                format!(" [{}]", c.known_by_relation.iter().map(|r| format!("{} {}/{}", r.relation, r.correct, r.total)).collect::<Vec<_>>().join(", "))
            } else {
                String::new()
            }
            + &c.known_untouched.map_or(String::new(), |k| format!(", of relations no edit touches {}/{}", k.correct, k.total)),
        c.perplexity.map_or("–".into(), |p| format!("{p:.2}")),
        c.agreement.map_or("–".into(), |x| format!("{:.1e}", x.kl)),
        c.fluency.map_or("–".into(), |f| format!("{f:.2}")),
        c.measure_seconds
    );
}

/// Runs (or continues) one arm; true when it reached the end.
fn run_arm(choice: BackendChoice, a: &Args, arm: &Arm, requests: &[revive::edit::request::EditRequest], known: Vec<revive::eval::retention::Fact>, deadline: Option<Instant>) -> Result<bool> {
    let dir = a.out().join(&arm.name);
    let new = (!Session::config_path(&dir).exists()).then(|| new_session(a, arm, requests));
    with_session(choice, &dir, new, (None, a.batch_metrics.scope()), |_| Ok(()), |session, gm, tok, measure, _, base| {
        super::session::bound_updates(session, a.max_update);
        let m = measures(a, &dir, session, gm, tok, base, known)?;
        let per_ckpt = a.every / a.batch;
        let total = session.batches_total();
        let n = session.requests.len();
        let mut done: std::collections::BTreeSet<usize> = read_checkpoints(&dir)?.iter().map(|c| c.edits).collect();
        loop {
            let b = session.batches_done();
            if let Some((recent_from, edits)) = checkpoint_at(a, b, total, n).filter(|(_, edits)| !done.contains(edits)) {
                let seconds: f64 = session.journal.batches().map(|(_, h)| h.seconds).sum();
                let c = m.checkpoint(gm, tok, &arm.name, &session.requests, edits, recent_from, b, seconds)?;
                append_checkpoint(&dir, &c)?;
                print_checkpoint(&c);
                done.insert(edits);
            }
            if b == total {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let chunk = if deadline.is_some() { 1 } else { per_ckpt - b % per_ckpt };
            session.run(gm, tok, measure, &RunOptions { progress: true, max_batches: Some(chunk) }, |x| print_batch(x.header, x.after, x.seconds, total))?;
        }
    })
}

/// One batch and one checkpoint of `arm` in a scratch directory, timed, then the estimate.
fn dry_run(choice: BackendChoice, a: &Args, plan: &Plan, arms: &[Arm], arm: &Arm, requests: &[revive::edit::request::EditRequest], known: Vec<revive::eval::retention::Fact>) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("revive-dry-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = &requests[..a.batch.min(requests.len())];
    let t = Instant::now();
    // The first batch and checkpoint of a process build (compile) the kernels they are the
    // first to run: once per arm, not per batch, so they count with the setup.
    let (stats, batch_s, ckpt_s, built, model_bytes) = with_session(choice, &dir, Some(new_session(a, arm, first)), (None, a.batch_metrics.scope()), |_| Ok(()), |session, gm, tok, measure, stats, base| {
        let m = measures(a, &dir, session, gm, tok, base, known)?;
        let work = gm.gpu().runtime_stats();
        let t0 = Instant::now();
        session.run(gm, tok, measure, &RunOptions { progress: true, max_batches: Some(1) }, |_| {})?;
        let batch_s = t0.elapsed().as_secs_f64();
        let after_batch = gm.gpu().runtime_stats();
        let c = m.checkpoint(gm, tok, &arm.name, &session.requests, first.len(), 0, 1, batch_s)?;
        let after_ckpt = gm.gpu().runtime_stats();
        let bytes: usize = base.tensors.values().map(|t| t.data.len() * 4).sum();
        if let Some(split) = c.measure_split {
            println!("checkpoint by measure: {split}");
        }
        let (in_batch, in_ckpt) = (after_batch - work, after_ckpt - after_batch);
        let built = [in_batch.pipelines, in_ckpt.pipelines];
        let built_s = [in_batch.pipeline_ns, in_ckpt.pipeline_ns].map(|ns| ns as f64 * 1e-9);
        println!(
            "building pipelines: {} in {:.1} s during the batch, {} in {:.1} s during the checkpoint (once per arm)",
            built[0], built_s[0], built[1], built_s[1]
        );
        Ok((stats, batch_s - built_s[0], c.measure_seconds - built_s[1], built_s[0] + built_s[1], bytes))
    })?;
    let setup_s = t.elapsed().as_secs_f64() - batch_s - ckpt_s;
    let _ = std::fs::remove_dir_all(&dir);
    let batches = plan.requests.div_ceil(plan.batch);
    let ckpts = plan.requests / plan.every + 1 + usize::from(!plan.requests.is_multiple_of(plan.every));
    let per_arm = batches as f64 * batch_s + ckpts as f64 * ckpt_s;
    println!("dry run of arm {} on 1 batch of {} (C0 and bases now cached):", arm.name, first.len());
    println!("  setup {setup_s:.0} s (C0 {stats:.0} s, building pipelines {built:.1} s), one batch {batch_s:.1} s, one checkpoint {ckpt_s:.1} s");
    println!(
        "  estimate: {batches} batches and {ckpts} checkpoints per arm ≈ {:.1} h per arm, {:.1} h for the {} arms (one after another)",
        per_arm / 3600.0,
        per_arm * arms.len() as f64 / 3600.0,
        arms.len()
    );
    println!(
        "  memory: the model {:.0} MB of f32 weights on the GPU, plus per batch its activations; each arm keeps its edited matrices' originals and bases (a few MB) and its journal ({} updates on disk)",
        model_bytes as f64 / 1e6,
        batches
    );
    Ok(())
}

/// The settings an arm ran with: the plan of the experiment directory that holds it (None for
/// an arm directory copied away from its experiment.json).
fn plan_of(experiment_dir: &Path) -> Result<Option<Plan>> {
    let path = experiment_dir.join("experiment.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not an experiment plan", path.display()))?))
}

/// The arm directories under `dirs` (experiment directories or arm directories), each with the
/// plan it ran under.
fn arm_dirs(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Option<Plan>)>> {
    let mut found = vec![];
    for d in dirs {
        if revive::eval::experiment::checkpoints_path(d).exists() {
            found.push((d.clone(), plan_of(d.parent().unwrap_or(Path::new(".")))?));
            continue;
        }
        let plan = plan_of(d)?;
        let mut arms = vec![];
        for e in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if revive::eval::experiment::checkpoints_path(&p).exists() {
                arms.push(p);
            }
        }
        arms.sort();
        found.extend(arms.into_iter().map(|p| (p, plan.clone())));
    }
    Ok(found)
}

/// Arms merged into one table must have run the same experiment: the same requests, batches,
/// checkpoints and measures (which methods and REVIVE settings each call listed may differ),
/// and each arm must come from one place only.
fn check_mergeable(arms: &[(PathBuf, Option<Plan>)]) -> Result<()> {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    for (i, (a, _)) in arms.iter().enumerate() {
        if let Some((b, _)) = arms[..i].iter().find(|(b, _)| name(b) == name(a)) {
            bail!("arm {} is in both {} and {}: merge one of them", name(a), b.display(), a.display());
        }
    }
    let mut first: Option<(&Path, &Plan)> = None;
    for (dir, plan) in arms {
        let Some(plan) = plan else {
            eprintln!("warning: {} has no experiment.json beside it: its settings cannot be checked against the other arms'", dir.display());
            continue;
        };
        match first {
            None => first = Some((dir, plan)),
            Some((d0, p0)) => {
                let differ = p0.differences(plan, false);
                ensure!(differ.is_empty(), "{} and {} ran with other settings ({}): their results do not belong in one table", d0.display(), dir.display(), differ.join("; "));
            }
        }
    }
    Ok(())
}

/// Collects the checkpoints of every arm under `dirs` (experiment directories or arm
/// directories) and writes results.csv, results.json, table.md and the plots into `out`
/// (default: the one experiment directory merged).
fn merge(dirs: &[PathBuf], out: Option<&Path>) -> Result<()> {
    let out = match (out, dirs) {
        (Some(o), _) => o.to_path_buf(),
        (None, [d]) if !revive::eval::experiment::checkpoints_path(d).exists() => d.clone(),
        _ => bail!("--merge of {} directories: say with --out where the table and plots go", dirs.len()),
    };
    let arms = arm_dirs(dirs)?;
    check_mergeable(&arms)?;
    let mut rows: Vec<Checkpoint> = vec![];
    for (dir, _) in &arms {
        rows.extend(read_checkpoints(dir)?);
    }
    ensure!(!rows.is_empty(), "no checkpoints under {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
    rows.sort_by(|x, y| x.arm.cmp(&y.arm).then(x.edits.cmp(&y.edits)));
    rows.dedup_by(|x, y| x.arm == y.arm && x.edits == y.edits);
    // Arms run in parallel into one directory each merge it when they end.
    let _lock = revive::store::lock_dir(&out, true)?;
    let write = |name: &str, text: String| revive::store::write_durable(&out.join(name), text.as_bytes());
    write("results.csv", revive::eval::experiment::csv(&rows))?;
    write("results.json", serde_json::to_string_pretty(&rows)?)?;
    let table = revive::eval::experiment::table(&rows);
    write("table.md", table.clone())?;
    let svg = out.join("curves.svg");
    revive::eval::plot::experiment(&rows, &svg)?;
    revive::eval::plot::png_from_svg(&svg, &out.join("curves.png"))?;
    println!("\n{table}\nresults.csv, results.json, table.md, curves.svg and curves.png in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str) -> Plan {
        let base = serde_json::json!({"model": "smollm2", "methods": ["memit"], "revive": ["none"], "edits": "e.json", "edits_sha256": "x",
            "requests": 8, "batch": 2, "every": 4, "layers": null, "steps": 12, "templates": 0, "cov_tokens": 4096, "hparams": null,
            "known_facts": 4, "sample": 0, "ppl_tokens": 256, "agreement_prompts": 4, "fluency_prompts": 2, "fluency_tokens": 8, "spectral_tau": 0.5});
        let mut v = base;
        for (k, x) in serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json).unwrap() {
            v[k] = x;
        }
        serde_json::from_value(v).unwrap()
    }

    /// A plan written before the edited layer, target loss, prose and known facts were recorded
    /// still continues under the same command (whatever those flags were); between plans that
    /// record them, each counts; the lists of arms count only when asked.
    #[test]
    fn plans_differ_only_in_what_both_record() {
        let old = plan("{}");
        let new = plan(r#"{"version": 2, "layer": 5, "target_loss": "published", "prose": "p.txt", "known_sha256": "k"}"#);
        assert_eq!(old.version, 1);
        assert!(old.differences(&new, true).is_empty(), "{:?}", old.differences(&new, true));
        let default = plan(r#"{"version": 2, "known_sha256": "k"}"#);
        let differ = new.differences(&default, true);
        assert_eq!(differ.len(), 3, "{differ:?}");
        assert!(differ.iter().any(|d| d.starts_with("layer: 5 against null")), "{differ:?}");
        let other_arms = plan(r#"{"version": 2, "known_sha256": "k", "methods": ["alphaedit"]}"#);
        assert_eq!(default.differences(&other_arms, true).len(), 1);
        assert!(default.differences(&other_arms, false).is_empty());
        assert_eq!(old.differences(&plan(r#"{"sample": 3}"#), false), ["sample: 0 against 3"]);
    }
}
