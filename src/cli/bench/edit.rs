//! `revive bench edit`: time per ROME edit, edits applied one after another, with efficacy and
//! the retention of known facts; plain ROME against ROME + REVIVE with --both.

use crate::cli::common::{edit_setup, make_guard};
use crate::cli::edit::print_edit;
use crate::cli::{HpArgs, ReviveArgs};
use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;

#[derive(clap::Args)]
pub(in crate::cli) struct Args {
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
    /// rome (one edit at a time, as above) or a batch method run as a journaled session per
    /// arm in --out: time per batch by phase against one forward pass.
    #[arg(long, default_value = "rome")]
    method: String,
    /// Requests per batch (batch methods).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Edited layers of a batch method, e.g. 3,4,5,6,7.
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Where the batch methods' sessions go (one directory per arm, replaced).
    #[arg(long, default_value = "runs/bench-edit")]
    out: std::path::PathBuf,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    use revive::edit::guard::RankRule;
    use revive::edit::run::Guarding;
    if a.method != "rome" {
        return run_batch(choice, a);
    }
    let targets_through = a.revive.through_guard(a.both)?;
    let requests = revive::edit::request::load_requests(&a.edits)?;
    let requests = &requests[..a.limit.unwrap_or(requests.len()).min(requests.len())];
    let known = revive::eval::retention::load_facts(&a.known)?;
    let hp = a.hp.resolve()?;
    let (m, gpu, gm, cov, cov_seconds) = edit_setup(choice, &a.model, &hp, a.hp.hparams.is_some(), |_| Ok(()))?;
    let rule = a.revive.rule();
    let opts = a.revive.svd();
    // The guard doubles as the original's top-k basis for the diagnostics.
    let guard = if rule.is_some() || a.both || a.track { Some(make_guard(&gm, hp.layer, rule.unwrap_or(RankRule::Energy(0.5)), &opts)?) } else { None };
    let basis = guard.as_ref().map(|g| g.basis());
    let down = revive::model::names::down_name(hp.layer);
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
        println!("== {} ==", match (with_guard, targets_through) {
            (true, true) => "ROME + REVIVE, targets through the guard",
            (true, false) => "ROME + REVIVE",
            (false, _) => "ROME",
        });
        let b = revive::bench::edit::run(&gm, &m.tok, requests, &known, &hp, &cov, g.map(|guard| Guarding { guard, targets_through }), track.as_ref(), |r| print_edit(r, n))?;
        print_bench_edit(&gpu, &hp, &cov, cov_seconds, &known, &b);
        results.push(b);
        // After every arm, so a run stopped in a later arm keeps the earlier ones.
        if let Some(path) = &a.json {
            let doc = serde_json::json!({ "adapter": gpu.label(), "model": m.source, "hparams": hp, "covariance_seconds": cov_seconds, "arms": results });
            std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if results.len() > 1 {
        println!("\n{:<20} {:>9} {:>9} {:>11} {:>12} {:>10}", "arm", "efficacy", "at end", "paraphrase", "known facts", "s/edit");
        for b in &results {
            println!(
                "{:<20} {:>6}/{:<2} {:>6}/{:<2} {:>10.0}% {:>8}/{:<3} {:>10.1}",
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
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{:.0}%", 100.0 * x));
    let e = &b.scores_at_end;
    println!("EasyEdit after all edits: rewrite_acc {}, rephrase_acc {}, locality against the unedited model {}, portability {}", pct(e.rewrite_acc), pct(e.rephrase_acc), pct(e.locality), pct(e.portability));
    println!("known facts (not edited): {}/{} before, {}/{} after", b.known_before, known.len(), b.known_after, known.len());
    for c in &b.known_lost {
        println!("  lost: {}{:?} (expected {:?})", c.prompt, c.got, c.answer);
    }
}

/// A batch method: one session per arm (plain, and with REVIVE under --both or --revive), each
/// from the original weights, then where the batch time went.
fn run_batch(choice: BackendChoice, a: Args) -> Result<()> {
    use crate::cli::session::{no_output, print_batch, spec_of, with_session, NewSession};
    use revive::edit::guard::RankRule;
    let requests = revive::edit::request::load_requests(&a.edits)?;
    let requests = &requests[..a.limit.unwrap_or(requests.len()).min(requests.len())];
    let rule = a.revive.rule();
    let targets_through = a.revive.through_guard(a.both)?;
    let arms: Vec<Option<RankRule>> = if a.both { vec![None, Some(rule.unwrap_or(RankRule::Energy(0.5)))] } else { vec![rule] };
    let mut results = vec![];
    for arm in arms {
        let through = arm.is_some() && targets_through;
        let name = format!("{}{}{}", a.method, if arm.is_some() { "+revive" } else { "" }, if through { "+through" } else { "" });
        let dir = a.out.join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let new = NewSession {
            model: a.model.clone(),
            method: a.method.clone(),
            hp: a.hp.clone(),
            layers: a.layers.clone(),
            requests: requests.to_vec(),
            batch: a.batch,
            revive: arm,
            targets_through_guard: through,
            svd_tol: a.revive.svd_tol,
            max_update_ratio: revive::edit::update::DEFAULT_MAX_UPDATE_RATIO,
            output: no_output(),
        };
        spec_of(&new)?;
        println!("== {name} ==");
        let b = with_session(choice, &dir, Some(new), (Some(&a.known), Default::default()), |_| Ok(()), |session, gm, tok, measure, stats, _| {
            let forward = revive::bench::edit::forward_pass_seconds(gm, tok, &session.requests[0].full_prompt())?;
            let total = session.batches_total();
            session.run(gm, tok, measure, &revive::edit::session::RunOptions { progress: true, max_batches: None }, |b| print_batch(b.header, b.after, b.seconds, total))?;
            Ok(revive::bench::session::summarize(&name, session, stats, forward))
        })?;
        print_batch_bench(&b);
        results.push(b);
        if let Some(path) = &a.json {
            std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({ "arms": results }))?).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if results.len() > 1 {
        println!("\n{:<16} {:>9} {:>11} {:>13} {:>12} {:>13} {:>9} {:>12} {:>12} {:>10}", "arm", "efficacy", "paraphrase", "neighborhood", "rewrite_acc", "rephrase_acc", "locality", "portability", "known facts", "s/batch");
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.0}%", 100.0 * x));
        for b in &results {
            let known = b.known_correct_at_end.zip(b.known_total).map_or("-".into(), |(c, t)| format!("{c}/{t}"));
            println!(
                "{:<16} {:>9} {:>11} {:>13} {:>12} {:>13} {:>9} {:>12} {:>12} {:>10.1}",
                b.arm,
                pct(b.efficacy),
                pct(b.paraphrase),
                pct(b.neighborhood),
                pct(b.rewrite_acc),
                pct(b.rephrase_acc),
                pct(b.locality),
                pct(b.portability),
                known,
                b.batch_seconds
            );
        }
    }
    Ok(())
}

fn print_batch_bench(b: &revive::bench::session::BatchBench) {
    let f = b.forward_seconds;
    println!(
        "{}: {} batches of {}; median batch {:.1} s = {:.0} forward passes ({:.3} s each); {:.2} edits/s",
        b.arm, b.batches, b.batch_size, b.batch_seconds, b.batch_seconds / f, f, b.edits_per_second
    );
    println!(
        "  targets {:.1} s ({:.0} passes), keys {:.1} s, solves {:.1} s, writes (guard, checks) {:.2} s, metrics {:.1} s; C0 {:.1} s once",
        b.targets_seconds, b.targets_seconds / f, b.keys_seconds, b.solve_seconds, b.write_seconds, b.metrics_seconds, b.statistics_seconds
    );
    if let (Some(d), Some(g), Some(r)) = (b.targets_dispatches, b.targets_bind_groups, b.targets_readbacks) {
        println!("  targets' runtime work per batch: {d} dispatches, {g} bind groups created, {r} reads back");
        if let (Some(n), Some(secs)) = (b.targets_pipelines, b.targets_pipeline_seconds) {
            if n > 0 {
                println!("  of the targets' time, building {n} pipelines (once per process; the driver compiles each kernel): {secs:.2} s");
            }
        }
        if let Some(cpu) = b.targets_host_cpu_seconds {
            // Building pipelines is host CPU too; per dispatch, the recording alone.
            let recording = cpu - b.targets_pipeline_seconds.unwrap_or(0.0);
            println!(
                "  targets' host CPU (the recording thread): {cpu:.2} s of {:.2} s; without building pipelines {recording:.2} s, {:.1} µs per dispatch",
                b.targets_seconds,
                recording * 1e6 / d.max(1) as f64
            );
        }
    }
    if !b.targets_profile.is_empty() {
        println!("  targets by kernel (REVIVE_PROFILE, last batch; every dispatch waited for):");
        for k in &b.targets_profile {
            println!("    {:<28} {:>7} dispatches {:>10.1} ms", k.kernel, k.dispatches, k.ms);
        }
    }
}
