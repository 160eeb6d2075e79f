//! An editing session: requests in batches through one method, every update through the REVIVE
//! guard of its matrix, each batch journaled before it touches the weights, resumable after a
//! crash or kill with the same final weights, bit for bit.
//!
//! A batch runs in three steps. (1) The method edits with the session's [`Writer`]; its writes
//! are tentative (later layers of MEMIT must see them). (2) The edited matrices are put back as
//! they were and the batch record — the updates as written — is appended to the journal and
//! flushed to disk. (3) The recorded updates are added to the weights and the method is told
//! what was written. Step 3 is exactly what a replay of the journal does, so the weights of a
//! resumed session equal those of one that never stopped. A batch that fails in step 1 (a
//! request whose subject is not in its prompt, a non-finite or exploding update) leaves the
//! weights and the journal as they were, and the error names the batch and its requests.

use super::alphaedit::{AlphaEditSolver, NullSpace, NullSpaceReport};
use super::covariance::layers_second_moment;
use super::moment::SecondMoment;
use super::guard::{guard_dir, RankRule, SpectralGuard};
use super::hparams::{BatchHparams, BatchMethod, RomeHparams};
use super::journal::{BatchHeader, Journal, MetricsHeader, UpdateMeta};
use super::keys::context_templates;
use super::memit::{BatchEditor, MemitSolver, Passes, Shaper};
use super::nse::{BaseWeights, NseSolver};
use super::method::{Method, Writer};
use super::prune::PruneShaper;
use super::rect::RectShaper;
use super::request::EditRequest;
use super::rome::{CovSolver, RomeMethod};
use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::linalg::svd::SvdOptions;
use crate::model::forward::GpuModel;
use crate::model::Tok;
use crate::ops::elementwise::scale;
use crate::store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const FORMAT: &str = "revive-session-v1";

/// The method and its hyper-parameters, as a session records them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum MethodSpec {
    Rome { hparams: RomeHparams },
    Batch { hparams: BatchHparams },
}

impl MethodSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Rome { .. } => "rome",
            MethodSpec::Batch { hparams } => hparams.method.name(),
        }
    }
    pub fn layers(&self) -> Vec<usize> {
        match self {
            MethodSpec::Rome { hparams } => vec![hparams.layer],
            MethodSpec::Batch { hparams } => hparams.layers.clone(),
        }
    }
    fn templates(&self) -> &super::hparams::Templates {
        match self {
            MethodSpec::Rome { hparams } => &hparams.templates,
            MethodSpec::Batch { hparams } => &hparams.templates,
        }
    }
    /// The corpus tokens C0 is taken from.
    pub fn mom2_tokens(&self) -> usize {
        match self {
            MethodSpec::Rome { hparams } => hparams.mom2_tokens,
            MethodSpec::Batch { hparams } => hparams.mom2_tokens,
        }
    }
}

/// Everything a session is, written once to `DIR/session.json`; `--resume` reads it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionConfig {
    pub format: String,
    pub spec: MethodSpec,
    /// The base model as given (`smollm2`, a file, a directory).
    pub model: String,
    /// SHA-256 of the base values of every matrix the method may write.
    pub base_hash: String,
    pub revive: Option<RankRule>,
    /// The methods optimise their targets through the guards (`Writer::reach`), and MEMIT's
    /// family solves within them; false in sessions written before the setting existed. (A
    /// session of 2026-12-05 or earlier with it on, resumed now, solves its later batches
    /// within the guard: correct, not bit-identical to its uninterrupted run.)
    #[serde(default)]
    pub targets_through_guard: bool,
    pub svd_tol: f64,
    pub batch: usize,
    pub n_requests: usize,
    pub requests_sha256: String,
    /// The context templates, sampled once from the base model.
    pub templates: Vec<String>,
    pub max_update_ratio: f64,
    /// What the session writes at its end, as its first run asked: a resume writes the same
    /// unless told otherwise. Absent in sessions written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<SessionOutput>,
    /// The tokenizer's start tokens (BOS) that began every sequence of the session (its
    /// prompts, C0's corpus): a resume under a tokenizer that puts others would edit the later
    /// batches from other keys. Empty, and not written, for models without (SmolLM2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_tokens: Vec<u32>,
}

/// A session's output, by the command line's names: `save` delta, full, gguf or none; `dtype`
/// f32, f16 or bf16.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionOutput {
    pub save: String,
    pub dtype: String,
}

impl SessionConfig {
    pub fn with_output(self, output: SessionOutput) -> SessionConfig {
        SessionConfig { output: Some(output), ..self }
    }

    /// Targets through the guards: only with REVIVE, which has the guards.
    pub fn with_targets_through_guard(self, on: bool) -> Result<SessionConfig> {
        if on && self.revive.is_none() {
            return Err(Error::Edit("targets through the guard need REVIVE's guards: give --revive τ or --revive-rank K as well".into()));
        }
        Ok(SessionConfig { targets_through_guard: on, ..self })
    }
}

/// Hash of the base values of the matrices a session writes: a resume or replay must start
/// from the same weights.
pub fn base_hash(model: &GpuModel, matrices: &[String]) -> Result<String> {
    let mut bytes = vec![];
    for m in matrices {
        bytes.extend(m.as_bytes());
        bytes.extend(bytemuck::cast_slice::<f32, u8>(&model.gpu().download(model.tensor(m)?)?));
    }
    Ok(store::sha256_hex(&bytes))
}

/// What the session measures before and after each batch (CounterFact metrics, from the eval
/// layer); a JSON object, whose "efficacy" the progress line shows when there is one. The
/// measure after a batch is given the one before it (`before`), for what compares the two
/// models (EasyEdit's locality).
pub trait Measure {
    fn measure(&mut self, model: &GpuModel, tok: &Tok, requests: &[EditRequest], before: Option<&serde_json::Value>) -> Result<serde_json::Value>;
}

/// No metrics.
pub struct NoMeasure;

impl Measure for NoMeasure {
    fn measure(&mut self, _: &GpuModel, _: &Tok, _: &[EditRequest], _: Option<&serde_json::Value>) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
}

/// The C0 of each edited layer (of the base model) and, for AlphaEdit, what it derives.
pub struct Statistics {
    pub moments: Vec<SecondMoment>,
    pub null_spaces: Vec<NullSpaceReport>,
}

/// Builds the method of `spec` on the base model (before any replay: everything it derives
/// from the weights must come from the base). `moments`: C0 of each edited layer.
pub fn build_method<'t>(model: &GpuModel, tok: &'t Tok, spec: &MethodSpec, templates: &[String], moments: &[SecondMoment]) -> Result<(Box<dyn Method + 't>, Vec<NullSpaceReport>)> {
    let covs = |moments: &[SecondMoment]| moments.iter().map(|m| CovSolver::new(m.layer, m.tokens, &m.c0, m.dim)).collect::<Result<Vec<_>>>();
    match spec {
        MethodSpec::Rome { hparams } => {
            let cov = covs(moments)?.remove(0);
            Ok((Box::new(RomeMethod::new(hparams.clone(), templates.to_vec(), cov, tok)), vec![]))
        }
        MethodSpec::Batch { hparams } => {
            let mut reports = vec![];
            let solver: Box<dyn super::memit::Solver> = match hparams.method {
                BatchMethod::AlphaEdit => {
                    let thr = hparams.nullspace_threshold.expect("validated");
                    let mut spaces = vec![];
                    for m in moments {
                        let s = NullSpace::of(m, thr)?;
                        reports.push(NullSpaceReport { layer: m.layer, dim: m.dim, null_dim: s.null_dim, lambda_max: s.lambda_max, threshold: thr });
                        spaces.push(s);
                    }
                    Box::new(AlphaEditSolver::new(spaces, hparams.l2.expect("validated")))
                }
                BatchMethod::Nse => {
                    let c0 = moments.iter().map(SecondMoment::symmetric).collect();
                    Box::new(NseSolver::new(c0, hparams.mom2_update_weight.expect("validated"), hparams.neuron_threshold.expect("validated")))
                }
                _ => Box::new(MemitSolver::new(covs(moments)?, hparams.mom2_update_weight.expect("validated"))),
            };
            let shaper: Option<Box<dyn Shaper>> = match hparams.method {
                BatchMethod::Rect => Some(Box::new(RectShaper { keep_fraction: hparams.keep_fraction.expect("validated") })),
                BatchMethod::Prune => {
                    let ws: Vec<&Tensor> = hparams.layers.iter().map(|&l| model.tensor(&crate::model::names::down_name(l))).collect::<Result<_>>()?;
                    Some(Box::new(PruneShaper::new(model.gpu(), &ws)?))
                }
                _ => None,
            };
            let mut editor = BatchEditor::new(hparams.clone(), templates.to_vec(), tok, solver, shaper);
            if hparams.method == BatchMethod::Nse {
                let passes = Passes { alpha: hparams.alpha.expect("validated"), upper_bound: hparams.upper_bound.expect("validated"), max_iterations: hparams.max_iterations.expect("validated") };
                editor = editor.with_passes(passes, BaseWeights::copy(model, &spec.matrices())?);
            }
            Ok((Box::new(editor), reports))
        }
    }
}

/// A stand-in for the method when a journal is only replayed (`revive apply`): it names the
/// matrices and refuses to edit; replaying adds the recorded updates and needs no method state.
pub struct ReplayOnly {
    pub matrices: Vec<String>,
}

impl Method for ReplayOnly {
    fn name(&self) -> &'static str {
        "replay"
    }
    fn matrices(&self) -> Vec<String> {
        self.matrices.clone()
    }
    fn edit(&mut self, _: &mut Writer, _: &[EditRequest], _: &mut dyn FnMut(&str)) -> Result<super::method::MethodRecord> {
        Err(Error::Edit("a replay-only session cannot edit".into()))
    }
    fn observe(&mut self, _: &crate::gpu::Gpu, _: &[super::update::Update], _: &[(String, crate::model::weights::HostTensor)]) -> Result<()> {
        Ok(())
    }
}

impl MethodSpec {
    /// The matrices a method of this spec writes.
    pub fn matrices(&self) -> Vec<String> {
        self.layers().iter().map(|&l| crate::model::names::down_name(l)).collect()
    }
}

/// The guards of every matrix a method writes, from the base weights (cached on disk).
pub fn build_guards(model: &GpuModel, matrices: &[String], rule: RankRule, opts: &SvdOptions, mut on_guard: impl FnMut(&SpectralGuard)) -> Result<BTreeMap<String, SpectralGuard>> {
    let mut guards = BTreeMap::new();
    for m in matrices {
        let (g, _) = SpectralGuard::cached(model.gpu(), model.tensor(m)?, m, rule, opts, &guard_dir())?;
        on_guard(&g);
        guards.insert(m.clone(), g);
    }
    Ok(guards)
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub progress: bool,
    /// Stop after this many batches of this call (the journal stays resumable).
    pub max_batches: Option<usize>,
}

/// One batch as it completed, for printing.
pub struct BatchDone<'a> {
    pub header: &'a BatchHeader,
    pub after: &'a serde_json::Value,
    pub seconds: f64,
}

pub struct Session<'a> {
    pub dir: PathBuf,
    pub config: SessionConfig,
    pub requests: Vec<EditRequest>,
    pub journal: Journal,
    method: Box<dyn Method + 'a>,
    guards: BTreeMap<String, SpectralGuard>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Model { file: path.display().to_string(), detail: e.to_string() }
}

impl<'a> Session<'a> {
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("session.json")
    }

    /// Reads a session's configuration and requests (for `--resume`, `journal`, `apply`).
    pub fn read_config(dir: &Path) -> Result<(SessionConfig, Vec<EditRequest>)> {
        let path = Self::config_path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, format!("cannot read ({e}); is {} a session directory?", dir.display())))?;
        let config: SessionConfig = serde_json::from_str(&text).map_err(|e| io_err(&path, format!("bad session file: {e}")))?;
        if config.format != FORMAT {
            return Err(io_err(&path, format!("format '{}', expected '{FORMAT}'", config.format)));
        }
        let rpath = dir.join("requests.json");
        let bytes = std::fs::read(&rpath).map_err(|e| io_err(&rpath, format!("cannot read: {e}")))?;
        if store::sha256_hex(&bytes) != config.requests_sha256 {
            return Err(io_err(&rpath, "does not match the checksum in session.json"));
        }
        let requests: Vec<EditRequest> = serde_json::from_slice(&bytes).map_err(|e| io_err(&rpath, format!("bad requests: {e}")))?;
        if requests.len() != config.n_requests {
            return Err(io_err(&rpath, format!("{} requests, session.json says {}", requests.len(), config.n_requests)));
        }
        Ok((config, requests))
    }

    /// Starts a session in `dir`, which must not hold one. Samples the context templates from
    /// the (base) model.
    #[allow(clippy::too_many_arguments)]
    pub fn config_for(model: &GpuModel, tok: &Tok, model_name: &str, spec: MethodSpec, requests: &[EditRequest], batch: usize, revive: Option<RankRule>, svd_tol: f64, max_update_ratio: f64) -> Result<SessionConfig> {
        if batch == 0 {
            return Err(Error::Edit("the batch size must be at least 1".into()));
        }
        if requests.is_empty() {
            return Err(Error::Edit("there are no requests to edit (the list is empty)".into()));
        }
        super::hparams::check_layers(spec.name(), &spec.layers(), model.config.n_layers)?;
        let matrices: Vec<String> = spec.layers().iter().map(|&l| crate::model::names::down_name(l)).collect();
        let templates = context_templates(model, tok, spec.templates())?;
        check_lengths(model.config.max_seq_len, tok, requests, &templates)?;
        let bytes = serde_json::to_vec(requests).map_err(|e| Error::Edit(format!("requests to JSON: {e}")))?;
        Ok(SessionConfig {
            format: FORMAT.into(),
            model: model_name.into(),
            base_hash: base_hash(model, &matrices)?,
            revive,
            targets_through_guard: false,
            svd_tol,
            batch,
            n_requests: requests.len(),
            requests_sha256: store::sha256_hex(&bytes),
            templates,
            max_update_ratio,
            spec,
            output: None,
            start_tokens: tok.start().to_vec(),
        })
    }

    /// Writes the configuration and the requests of a new session.
    pub fn write_new(dir: &Path, config: &SessionConfig, requests: &[EditRequest]) -> Result<()> {
        let path = Self::config_path(dir);
        if path.exists() {
            return Err(io_err(&path, "a session is already there: resume it with --resume, or choose another --out"));
        }
        // A journal without its session.json would replay as the first batches of the new one.
        if Journal::dir_of(dir).read_dir().is_ok_and(|mut d| d.next().is_some()) {
            return Err(io_err(&Journal::dir_of(dir), "holds the records of another session but no session.json: choose another --out, or move the journal away"));
        }
        let bytes = serde_json::to_vec(requests).map_err(|e| Error::Edit(format!("requests to JSON: {e}")))?;
        store::write_durable(&dir.join("requests.json"), &bytes)?;
        let text = serde_json::to_string_pretty(config).map_err(|e| Error::Edit(format!("session to JSON: {e}")))?;
        store::write_durable(&path, text.as_bytes())
    }

    /// C0 of every edited layer, from the base model.
    pub fn statistics(model: &GpuModel, tok: &Tok, spec: &MethodSpec, progress: bool) -> Result<Vec<SecondMoment>> {
        layers_second_moment(model, tok, &spec.layers(), spec.mom2_tokens(), progress)
    }

    /// Opens the session in `dir` on the base `model`, with its method and guards built
    /// (from the base weights), ready to replay.
    pub fn open(dir: &Path, model: &GpuModel, config: SessionConfig, requests: Vec<EditRequest>, method: Box<dyn Method + 'a>, guards: BTreeMap<String, SpectralGuard>) -> Result<Self> {
        Self::check_base(dir, model, &config, method.as_ref())?;
        let journal = Journal::open(dir)?;
        Ok(Session { dir: dir.to_path_buf(), config, requests, journal, method, guards })
    }

    /// The session in `dir` to replay and read only (`revive apply`): its journal as it
    /// stands, even while another process writes it, which this leaves alone.
    pub fn open_to_read(dir: &Path, model: &GpuModel, config: SessionConfig, requests: Vec<EditRequest>, method: Box<dyn Method + 'a>) -> Result<Self> {
        Self::check_base(dir, model, &config, method.as_ref())?;
        let journal = Journal::read(dir)?;
        Ok(Session { dir: dir.to_path_buf(), config, requests, journal, method, guards: Default::default() })
    }

    fn check_base(dir: &Path, model: &GpuModel, config: &SessionConfig, method: &dyn Method) -> Result<()> {
        if base_hash(model, &method.matrices())? != config.base_hash {
            return Err(Error::Edit(format!("the model '{}' is not the base this session in {} started from (its edited matrices differ)", config.model, dir.display())));
        }
        Ok(())
    }

    fn check_tokenizer(&self, tok: &Tok) -> Result<()> {
        if tok.start() != self.config.start_tokens.as_slice() {
            return Err(Error::Edit(format!(
                "the session in {} began its sequences with the start tokens {:?}, the tokenizer now puts {:?}: resume it with the program version and model files it was started with",
                self.dir.display(),
                self.config.start_tokens,
                tok.start()
            )));
        }
        Ok(())
    }

    /// The matrices the method writes.
    pub fn matrices(&self) -> Vec<String> {
        self.method.matrices()
    }

    pub fn batches_done(&self) -> usize {
        self.journal.n_batches()
    }

    pub fn batches_total(&self) -> usize {
        self.requests.len().div_ceil(self.config.batch)
    }

    /// Replays the journal onto the base weights: every batch record (up to `upto` batches)
    /// added to the weights and shown to the method. A batch whose metrics record is missing
    /// (the run stopped between the two) gets it measured now, when `measure` is given.
    pub fn replay(&mut self, model: &mut GpuModel, tok: &Tok, upto: Option<usize>, mut measure: Option<&mut dyn Measure>) -> Result<usize> {
        self.check_tokenizer(tok)?;
        let gpu = model.gpu().clone();
        let entries: Vec<_> = self.journal.batches().map(|(e, h)| (e.clone(), h.clone())).collect();
        // Each record must be the batch this session's batch size and requests put at its place:
        // a session.json or requests.json changed since would replay updates onto other requests.
        for (entry, h) in &entries {
            let range = self.batch_range(h.batch);
            let ids: Option<Vec<Option<u64>>> = self.requests.get(range[0]..range[1]).map(|r| r.iter().map(|r| r.case_id).collect());
            if h.requests != range || ids.as_ref() != Some(&h.case_ids) {
                return Err(Error::Edit(format!(
                    "{}: batch {} edited requests {}..{}, but this session puts requests {}..{} there: its session.json or requests.json changed after the journal was written",
                    entry.path.display(),
                    h.batch,
                    h.requests[0],
                    h.requests[1],
                    range[0],
                    range[1]
                )));
            }
        }
        let mut n = 0;
        for (entry, header) in entries.into_iter().take(upto.unwrap_or(usize::MAX)) {
            let (updates, state) = self.journal.load_batch(&gpu, &entry)?;
            for u in &updates {
                u.delta.add_to(&gpu, model.tensor(&u.matrix)?)?;
            }
            self.method.observe(&gpu, &updates, &state)?;
            n += 1;
            if let Some(m) = measure.as_deref_mut() {
                if self.journal.metrics_of(header.batch).is_none() {
                    let reqs = &self.requests[header.requests[0]..header.requests[1]];
                    let after = m.measure(model, tok, reqs, Some(&header.before))?;
                    self.journal.append_metrics(&MetricsHeader { batch: header.batch, after, seconds: 0.0 })?;
                }
            }
        }
        gpu.sync()?;
        Ok(n)
    }

    /// The requests of batch `b`, [start, end) (empty past the last batch).
    fn batch_range(&self, b: usize) -> [usize; 2] {
        let n = self.requests.len();
        [(b * self.config.batch).min(n), ((b + 1) * self.config.batch).min(n)]
    }

    /// Runs the remaining batches; `on_batch` sees each as it completes.
    pub fn run(&mut self, model: &mut GpuModel, tok: &Tok, measure: &mut dyn Measure, opts: &RunOptions, mut on_batch: impl FnMut(&BatchDone)) -> Result<()> {
        self.check_tokenizer(tok)?;
        if self.config.revive.is_some() && self.method.matrices().iter().any(|m| !self.guards.contains_key(m)) {
            return Err(Error::Edit("REVIVE is on but not every edited matrix has a guard".into()));
        }
        let total = self.batches_total();
        let start_batch = self.batches_done();
        let bar = crate::progress::batches(total as u64, &format!("{} batches", self.method.name()), opts.progress);
        bar.set_position(start_batch as u64);
        let started = Instant::now();
        for (done_here, b) in (start_batch..total).enumerate() {
            if opts.max_batches.is_some_and(|m| done_here >= m) {
                break;
            }
            let t0 = Instant::now();
            let range = self.batch_range(b);
            let reqs = self.requests[range[0]..range[1]].to_vec();
            let batch_size = self.config.batch;
            let name = |e: Error| {
                // A lost GPU is not this batch's fault: the caller may go on on a new device.
                if matches!(e, Error::DeviceLost { .. }) {
                    return e;
                }
                let ids: Vec<String> = reqs.iter().enumerate().map(|(i, r)| r.case_id.map_or(format!("#{}", range[0] + i), |c| format!("case {c}"))).collect();
                let hint = match e {
                    Error::OutOfMemory { .. } | Error::TooLarge { .. } => format!(
                        " — the batch does not fit this adapter: start a session with a smaller --batch (now {}) or fewer contexts per request (--templates)",
                        batch_size
                    ),
                    _ => String::new(),
                };
                Error::Edit(format!("batch {b} (requests {}) was refused; the weights and the journal are as they were: {e}{hint}", ids.join(", ")))
            };
            let before = measure.measure(model, tok, &reqs, None)?;
            let (header, written, state) = self.edit_batch(model, b, range, &reqs, before, &bar).map_err(name)?;
            let gpu = model.gpu().clone();
            let updates: Vec<_> = written.iter().map(|w| w.update.clone()).collect();
            self.journal.append_batch(&gpu, &header, &updates, &state).map_err(|e| match e {
                Error::DeviceLost { .. } => e,
                e => Error::Edit(format!("batch {b} was not applied: its journal record could not be written ({e}); the weights and the journal are as they were, and --resume continues from here")),
            })?;
            for u in &updates {
                u.delta.add_to(&gpu, model.tensor(&u.matrix)?)?;
            }
            self.method.observe(&gpu, &updates, &state)?;
            let after = measure.measure(model, tok, &reqs, Some(&header.before))?;
            let seconds = t0.elapsed().as_secs_f64();
            self.journal.append_metrics(&MetricsHeader { batch: b, after: after.clone(), seconds })?;
            bar.set_position((b + 1) as u64);
            let edits_done = (range[1] - start_batch * self.config.batch) as f64;
            let rate = edits_done / started.elapsed().as_secs_f64().max(1e-9);
            let eff = after.get("efficacy").and_then(|v| v.as_f64()).map(|e| format!(", last batch efficacy {:.0}%", 100.0 * e)).unwrap_or_default();
            bar.set_message(format!("{rate:.2} edits/s{eff}"));
            bar.suspend(|| on_batch(&BatchDone { header: &header, after: &after, seconds }));
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Step 1 and 2 of a batch (module comment): edit tentatively, then restore the matrices.
    fn edit_batch(&mut self, model: &mut GpuModel, b: usize, range: [usize; 2], reqs: &[EditRequest], before: serde_json::Value, bar: &indicatif::ProgressBar) -> Result<(BatchHeader, Vec<super::method::Written>, super::method::StateTensors)> {
        let gpu = model.gpu().clone();
        let matrices = self.method.matrices();
        let saved: Vec<(String, Tensor)> = matrices.iter().map(|m| Ok((m.clone(), scale(&gpu, model.tensor(m)?, 1.0)?))).collect::<Result<_>>()?;
        let t0 = Instant::now();
        let outcome = {
            let mut writer = Writer::new(model, &self.guards, self.config.max_update_ratio).with_targets_through_guard(self.config.targets_through_guard);
            let mut progress = |s: &str| bar.set_message(format!("batch {b}: {s}"));
            self.method.edit(&mut writer, reqs, &mut progress).map(|rec| (rec, writer.into_written()))
        };
        for (m, t) in saved {
            model.set_tensor(&m, t)?;
        }
        let (rec, written) = outcome?;
        let header = BatchHeader {
            batch: b,
            requests: range,
            case_ids: reqs.iter().map(|r| r.case_id).collect(),
            updates: written
                .iter()
                .map(|w| Ok(UpdateMeta { matrix: w.update.matrix.clone(), rank: w.update.delta.rank(), shape: w.update.delta.shape()?, proposed_norm: w.proposed_norm, norm: w.norm, filter: w.filter }))
                .collect::<Result<_>>()?,
            state: rec.state.iter().map(|(n, _)| n.clone()).collect(),
            method: rec.record,
            before,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok((header, written, rec.state))
    }

    /// The matrices the session changed, with their current values, as a safetensors file
    /// loadable over the base (`-m BASE --delta FILE`).
    pub fn save_delta(&self, model: &GpuModel, path: &Path) -> Result<()> {
        save_delta(model, &self.method.matrices(), &self.config.base_hash, path)
    }
}

/// Writes the current values of `matrices` with the base hash in the header.
pub fn save_delta(model: &GpuModel, matrices: &[String], base_hash: &str, path: &Path) -> Result<()> {
    let gpu = model.gpu();
    let values: Vec<(String, Vec<usize>, Vec<f32>)> = matrices.iter().map(|m| Ok((m.clone(), model.tensor(m)?.shape().to_vec(), gpu.download(model.tensor(m)?)?))).collect::<Result<_>>()?;
    let views: Vec<(&str, Vec<usize>, &[f32])> = values.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice())).collect();
    let fields = vec![("format", DELTA_FORMAT.to_string()), ("base_hash", base_hash.to_string()), ("matrices", serde_json::to_string(matrices).expect("names serialise"))];
    store::save(path, &fields, &views)
}

const DELTA_FORMAT: &str = "revive-delta-v1";

/// Loads a delta file over a base model on the GPU (see [`apply_delta`]).
pub fn load_delta(model: &mut GpuModel, path: &Path) -> Result<Vec<String>> {
    let mut w = model.to_weights()?;
    let matrices = apply_delta(&mut w, path)?;
    for m in &matrices {
        let t = &w.tensors[m];
        let g = model.gpu().upload(&t.data, &t.shape)?;
        model.set_tensor(m, g)?;
    }
    Ok(matrices)
}

/// Loads a delta file over base weights: the matrices it holds replace the base's, after the
/// base is checked to be the one the delta was made from (the hash of those matrices).
pub fn apply_delta(weights: &mut crate::model::Weights, path: &Path) -> Result<Vec<String>> {
    let st = store::load(path, &[("format", DELTA_FORMAT.to_string())])?;
    let matrices: Vec<String> = serde_json::from_str(st.field("matrices")?).map_err(|e| io_err(path, format!("header field 'matrices': {e}")))?;
    let mut bytes = vec![];
    for m in &matrices {
        let t = weights.tensors.get(m).ok_or_else(|| io_err(path, format!("holds '{m}', which the base model does not have")))?;
        bytes.extend(m.as_bytes());
        bytes.extend(bytemuck::cast_slice::<f32, u8>(&t.data));
    }
    if store::sha256_hex(&bytes) != st.field("base_hash")? {
        return Err(io_err(path, "was made over another base model (the base values of its matrices differ)"));
    }
    for m in &matrices {
        let t = weights.tensors.get_mut(m).expect("checked above");
        t.data = st.tensor(m, &t.shape)?;
    }
    Ok(matrices)
}

/// Refuses a request whose longest sequence (a context template around its prompt and target,
/// one of its paraphrase and neighbourhood prompts, or a locality or portability prompt and its
/// answer) does not fit the model's context, naming it, before any statistics or GPU work.
fn check_lengths(context: usize, tok: &Tok, requests: &[EditRequest], templates: &[String]) -> Result<()> {
    for (i, r) in requests.iter().enumerate() {
        // As the rewriting sequences are built: each template around the prompt, then a target.
        let mut prompt = 0;
        for t in templates {
            prompt = prompt.max(tok.encode_prompt(&t.replacen("{}", &r.full_prompt(), 1))?.len());
        }
        let new = tok.encode(&r.target_new)?.len();
        let truth = r.target_true.as_deref().map(|t| tok.encode(t)).transpose()?.map_or(0, |t| t.len());
        let mut longest = prompt + new.max(truth);
        for p in r.paraphrase_prompts.iter().chain(&r.neighborhood_prompts) {
            longest = longest.max(tok.encode_prompt(p)?.len() + new.max(1));
        }
        for l in r.locality.iter().chain(&r.portability) {
            longest = longest.max(tok.encode_prompt(&l.prompt)?.len() + tok.encode(&l.answer)?.len());
        }
        if longest > context {
            let id = r.case_id.map(|c| format!(" (case_id {c})")).unwrap_or_default();
            return Err(Error::Edit(format!("request {i}{id}: its prompts take up to {longest} tokens, more than the model's context of {context} positions")));
        }
    }
    Ok(())
}
