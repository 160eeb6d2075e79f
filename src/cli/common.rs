//! What `revive edit` and `revive bench edit` share: the model on the GPU with C0 of the edited
//! layer, and the REVIVE guard.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use revive::model::load::load;

static DELTA: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The global `--delta FILE`, set once when the command line is parsed.
pub(super) fn set_delta(delta: Option<std::path::PathBuf>) {
    let _ = DELTA.set(delta);
}

/// A model by name (`-m`), with the global `--delta` file of an editing session loaded over it.
pub(super) fn load_model(spec: &str) -> Result<revive::model::load::LoadedModel> {
    let mut m = load(spec)?;
    if let Some(Some(path)) = DELTA.get() {
        let names = revive::edit::session::apply_delta(&mut m.weights, path)?;
        eprintln!("{}: {} matrices loaded over {}", path.display(), names.len(), m.source);
        m.source = format!("{} + {}", m.source, path.display());
    }
    Ok(m)
}

/// The guard of the edited layer's down-projection, from the model's current (original)
/// weights, cached on disk.
pub(super) fn make_guard(gm: &GpuModel, layer: usize, rule: revive::edit::guard::RankRule, opts: &revive::linalg::svd::SvdOptions) -> Result<revive::edit::guard::SpectralGuard> {
    let name = revive::model::names::down_name(layer);
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

/// The model on the GPU with C0 of the edited layer, factorised; `check` sees the model first.
pub(super) fn edit_setup(
    choice: BackendChoice,
    model: &str,
    hp: &revive::edit::hparams::RomeHparams,
    hp_given: bool,
    check: impl FnOnce(&revive::model::load::LoadedModel) -> Result<()>,
) -> Result<(revive::model::load::LoadedModel, Gpu, GpuModel, revive::edit::rome::CovSolver, f64)> {
    let m = load(model)?;
    // What would refuse the result (the GGUF to write), before any work.
    check(&m)?;
    revive::edit::hparams::check_layers("ROME", &[hp.layer], m.weights.config.n_layers)?;
    note_shipped_hparams(&m.weights.config, hp_given);
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    eprintln!("model {} on {}; ROME at layer {}", m.source, gpu.label(), hp.layer);
    let start = std::time::Instant::now();
    let c0 = revive::edit::covariance::layer_second_moment(&gm, &m.tok, hp.layer, hp.mom2_tokens, true)?;
    let cov = revive::edit::rome::CovSolver::new(hp.layer, c0.tokens, &c0.c0, c0.dim)?;
    Ok((m, gpu, gm, cov, start.elapsed().as_secs_f64()))
}

/// Says so where the shipped hyper-parameters (SmolLM2's: its layers, λ and thresholds were
/// measured on SmolLM2-135M) are about to edit a model of another shape, as EasyEdit keeps a
/// file per model: the edit runs, but the user should know whose settings it runs with.
pub(super) fn note_shipped_hparams(config: &revive::model::Config, given: bool) {
    let s = revive::model::Config::smollm2_135m();
    let shape = |c: &revive::model::Config| (c.hidden, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden, c.vocab_size);
    if !given && shape(config) != shape(&s) {
        eprintln!(
            "note: editing with SmolLM2-135M's hyper-parameters (assets/hparams/), measured on a model of {} layers of width {}; this one has {} of {}: give --hparams FILE for its own (--layers changes only the layers; `revive trace --edits FACTS --suggest FILE --method M` writes M's with the layers where this model keeps its facts)",
            s.n_layers, s.hidden, config.n_layers, config.hidden
        );
    }
}

/// `--max-update`: a positive multiple of ‖W‖_F (one parser for every command that
/// takes it).
pub(super) fn positive_ratio(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 => Ok(r),
        _ => Err(format!("{s}: a positive multiple of ‖W‖_F")),
    }
}

/// Creates the output directory and proves it can be written, before any expensive step: an
/// --out that is a file or read-only must fail at once, not after the edits ran.
pub(super) fn prepare_out(dir: &std::path::Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("--out {}: this is a file, not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
    let probe = dir.join(format!(".revive-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("the output directory {} cannot be written", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The prompts of a file, one per line (blank lines skipped); an empty file is an error naming
/// it and saying why the command needs some.
pub(super) fn read_prompt_lines(path: &std::path::Path, needed_for: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    anyhow::ensure!(!lines.is_empty(), "{} holds no prompts (one per line): there is nothing to {needed_for}", path.display());
    Ok(lines)
}

/// Proves an output file can be written (creating it empty if absent) before the model is
/// loaded and run: an unwritable `flag` value fails at once, not after the work.
pub(super) fn ensure_writable(path: &std::path::Path, flag: &str) -> Result<()> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{flag} {} cannot be written", path.display()))?;
    Ok(())
}

/// Whether `e` or an error under it is a `revive::Error` that `is` accepts.
pub(super) fn caused_by(e: &anyhow::Error, is: impl Fn(&revive::Error) -> bool) -> bool {
    e.chain().any(|c| c.downcast_ref::<revive::Error>().is_some_and(&is))
}

/// Retries after a lost GPU that `revive edit` sessions and experiment arms allow by default.
pub(super) const GPU_RETRIES: u32 = 3;

/// Runs `attempt` (given the number of retries so far) and, when it failed because this
/// process lost its GPU, runs it again on a new device on the same adapter, up to `retries`
/// times (an adapter not offered again yet takes a retry too, after a longer wait): for work
/// that goes on from its journal, so a retry repeats at most the batch the loss cut short.
pub(super) fn recovering<R>(what: &str, retries: u32, mut attempt: impl FnMut(u32) -> Result<R>) -> Result<R> {
    let mut tried = 0;
    loop {
        let lost_before = revive::gpu::devices_lost();
        let e = match attempt(tried) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let lost = revive::gpu::devices_lost() > lost_before;
        let absent = caused_by(&e, |c| matches!(c, revive::Error::LostAdapterAbsent { .. }));
        if !(lost || absent && tried > 0) {
            return Err(e);
        }
        if tried == retries {
            return Err(e.context(format!("{what}: gave up after {retries} retries on a new device (--gpu-retries)")));
        }
        tried += 1;
        eprintln!("{what}: {e:#}");
        eprintln!("{what}: going on from the journal on a new device (retry {tried} of {retries})");
        // A driver that has just reset may take a while to offer the adapter again.
        std::thread::sleep(std::time::Duration::from_secs(5 * tried as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::recovering;

    /// A failure that is not a lost GPU is not retried.
    #[test]
    fn only_a_lost_gpu_is_retried() {
        let mut calls = 0;
        let r: anyhow::Result<()> = recovering("test", 3, |_| {
            calls += 1;
            anyhow::bail!("an ordinary failure")
        });
        assert_eq!((calls, r.unwrap_err().to_string()), (1, "an ordinary failure".to_string()));
    }
}
