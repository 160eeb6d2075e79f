//! `revive bench edit --method memit|alphaedit|rect|prune|nse --batch N`: where a batch's time goes
//! (targets, keys, solves, writes through the guard, metrics), next to one forward pass of a
//! prompt measured in the same run, with the efficacy the batches reached.

use super::median_f64 as median;
use crate::edit::session::Session;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BatchBench {
    pub arm: String,
    pub method: String,
    pub batches: usize,
    pub batch_size: usize,
    /// Seconds to the statistics (C0 of every edited layer; near 0 when cached).
    pub statistics_seconds: f64,
    /// Median seconds per batch, whole and by phase.
    pub batch_seconds: f64,
    pub targets_seconds: f64,
    pub keys_seconds: f64,
    pub solve_seconds: f64,
    pub write_seconds: f64,
    pub metrics_seconds: f64,
    /// The runtime's work in the targets, median per batch: dispatches, bind groups created,
    /// reads back to the host.
    pub targets_dispatches: Option<u64>,
    pub targets_bind_groups: Option<u64>,
    pub targets_readbacks: Option<u64>,
    /// The recording thread's CPU time in the targets, median seconds per batch: next to
    /// `targets_seconds`, how much of the targets' time is the host's.
    pub targets_host_cpu_seconds: Option<f64>,
    /// Compute pipelines built during the targets and the seconds that took, median per batch:
    /// a process's first batch builds (the driver compiles) every kernel of the backward pass
    /// once, which `targets_seconds` includes; later batches build none.
    pub targets_pipelines: Option<u64>,
    pub targets_pipeline_seconds: Option<f64>,
    /// With `REVIVE_PROFILE=1`: the last batch's targets per kernel.
    pub targets_profile: Vec<crate::gpu::KernelTime>,
    /// One forward pass of a short prompt, measured in the same run (the baseline).
    pub forward_seconds: f64,
    pub edits_per_second: f64,
    /// Mean over batches of the efficacy, paraphrase and neighbourhood right after each.
    pub efficacy: Option<f64>,
    pub paraphrase: Option<f64>,
    pub neighborhood: Option<f64>,
    /// … and of EasyEdit's token metrics (rewrite and rephrase accuracy, locality, portability).
    pub rewrite_acc: Option<f64>,
    pub rephrase_acc: Option<f64>,
    pub locality: Option<f64>,
    pub portability: Option<f64>,
    pub known_correct_at_end: Option<u64>,
    pub known_total: Option<u64>,
    /// The REVIVE filter's kept share of ‖ΔW‖, mean over all writes.
    pub revive_kept: Option<f64>,
}

/// The median of counts, as a count (none when there are none).
fn median_of_counts(xs: &[u64]) -> Option<u64> {
    (!xs.is_empty()).then(|| median(xs.iter().map(|&x| x as f64).collect()) as u64)
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The bench of a session's journal.
pub fn summarize(arm: &str, session: &Session, statistics_seconds: f64, forward_seconds: f64) -> BatchBench {
    let j = &session.journal;
    let mut host_cpu = vec![];
    let (mut pipelines, mut pipeline_seconds) = (vec![], vec![]);
    let (mut whole, mut targets, mut keys, mut solve, mut write, mut metrics) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut eff, mut para, mut neigh, mut kept) = (vec![], vec![], vec![], vec![]);
    let mut easyedit: [Vec<f64>; 4] = Default::default();
    let mut work: [Vec<u64>; 3] = Default::default();
    let mut last_after = serde_json::Value::Null;
    let mut targets_profile = vec![];
    for (_, h) in j.batches() {
        let t = &h.method["timing"];
        let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
        targets.push(f("targets"));
        host_cpu.extend(t["targets_host_cpu"].as_f64());
        pipelines.extend(t["targets_work"]["pipelines"].as_u64());
        pipeline_seconds.extend(t["targets_work"]["pipeline_ns"].as_u64().map(|ns| ns as f64 * 1e-9));
        keys.push(f("keys"));
        solve.push(f("solve"));
        write.push(f("write"));
        for (counts, key) in work.iter_mut().zip(["dispatches", "bind_groups", "readbacks"]) {
            counts.extend(t["targets_work"][key].as_u64());
        }
        targets_profile = serde_json::from_value(t["targets_profile"].clone()).unwrap_or_default();
        kept.extend(h.updates.iter().filter_map(|u| u.filter.map(|r| r.kept)));
        if let Some(m) = j.metrics_of(h.batch) {
            whole.push(m.seconds);
            metrics.push(m.seconds - h.seconds);
            eff.extend(m.after["efficacy"].as_f64());
            para.extend(m.after["paraphrase"].as_f64());
            neigh.extend(m.after["neighborhood"].as_f64());
            for (xs, key) in easyedit.iter_mut().zip(["rewrite_acc", "rephrase_acc", "locality", "portability"]) {
                xs.extend(m.after[key].as_f64());
            }
            last_after = m.after.clone();
        }
    }
    let batch_seconds = median(whole.clone());
    BatchBench {
        arm: arm.into(),
        method: session.config.spec.name().into(),
        batches: j.n_batches(),
        batch_size: session.config.batch,
        statistics_seconds,
        batch_seconds,
        targets_seconds: median(targets),
        keys_seconds: median(keys),
        solve_seconds: median(solve),
        write_seconds: median(write),
        metrics_seconds: median(metrics),
        targets_dispatches: median_of_counts(&work[0]),
        targets_bind_groups: median_of_counts(&work[1]),
        targets_readbacks: median_of_counts(&work[2]),
        targets_host_cpu_seconds: (!host_cpu.is_empty()).then(|| median(host_cpu)),
        targets_pipelines: median_of_counts(&pipelines),
        targets_pipeline_seconds: (!pipeline_seconds.is_empty()).then(|| median(pipeline_seconds)),
        targets_profile,
        forward_seconds,
        edits_per_second: session.config.batch as f64 / batch_seconds,
        efficacy: mean(&eff),
        paraphrase: mean(&para),
        neighborhood: mean(&neigh),
        rewrite_acc: mean(&easyedit[0]),
        rephrase_acc: mean(&easyedit[1]),
        locality: mean(&easyedit[2]),
        portability: mean(&easyedit[3]),
        known_correct_at_end: last_after["known_correct"].as_u64(),
        known_total: last_after["known_total"].as_u64(),
        revive_kept: mean(&kept),
    }
}
