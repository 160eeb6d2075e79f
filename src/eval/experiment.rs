//! The experiment's checkpoints: what an arm (a method with or without REVIVE) looks like after
//! N edits — CounterFact metrics on the last edits and on all edits so far, retention of known
//! facts, perplexity on held-out prose, agreement with the unedited model, fluency and the
//! spectral diagnostics of every edited matrix — and the table and plots built from the
//! checkpoints of several arms.

use crate::edit::guard::SpectralGuard;
use crate::edit::request::EditRequest;
use crate::error::{Error, Result};
use crate::eval::counterfact::{cf_scores, facts_metrics_against, FactMetrics};
pub use crate::eval::counterfact::CfScores;
use crate::eval::general::{agreement, fluency, next_token_logprobs, perplexity, Agreement, ProseSet};
use crate::eval::retention::{by_relation, check_facts, known_loss, untouched_relations, Fact, KnownLoss, RelationRetention, Retained};
use crate::eval::spectrum::diagnose;
use crate::gpu::Tensor;
use crate::linalg::subspace::Basis;
use crate::linalg::svd::SvdOptions;
use crate::model::batch::PassBudget;
use crate::model::forward::GpuModel;
use crate::model::Tok;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One edited matrix at a checkpoint, against the original weight and its top-k subspaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixState {
    pub matrix: String,
    pub k: usize,
    /// ‖U⁰_kᵀ(W − W0)‖/‖W − W0‖ and ‖(W − W0)V⁰_k‖/‖W − W0‖: the accumulated update's share in
    /// the original protected subspaces.
    pub leak_left: f64,
    pub leak_right: f64,
    pub weight_norm: f64,
    /// ‖W − W0‖_F.
    pub drift: f64,
    pub sigma1: f64,
    pub sigma1_original: f64,
    /// ‖U⁰_kᵀ U_k‖²_F / k (1: the top-k subspace is unchanged).
    pub left_similarity: f64,
    pub right_similarity: f64,
}

/// An arm after `edits` edits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub arm: String,
    pub edits: usize,
    pub batches: usize,
    /// Seconds spent editing so far (the journal's batch times, metrics excluded).
    pub edit_seconds: f64,
    /// The edits since the previous checkpoint (a sample of them), and all edits so far (a sample).
    pub recent: Option<CfScores>,
    pub all: Option<CfScores>,
    pub known_correct: Option<usize>,
    pub known_total: usize,
    /// Where the lost known facts went (absent from checkpoints written before it was measured).
    #[serde(default)]
    pub known_loss: Option<KnownLoss>,
    /// The known facts still answered, relation by relation (the capitals are a relation no
    /// edit touches).
    #[serde(default)]
    pub known_by_relation: Vec<RelationRetention>,
    /// The known facts of relations no request of the run edits (capitals, element symbols,
    /// opposites in the shipped set): the control for damage beyond the edits' neighbourhood.
    #[serde(default)]
    pub known_untouched: Option<Retained>,
    pub perplexity: Option<f64>,
    pub agreement: Option<Agreement>,
    pub fluency: Option<f64>,
    pub matrices: Vec<MatrixState>,
    /// Seconds this checkpoint's measures took.
    pub measure_seconds: f64,
    /// … and measure by measure (absent from checkpoints written before it was recorded).
    #[serde(default)]
    pub measure_split: Option<MeasureTimes>,
}

/// Seconds a checkpoint spent on each measure: where a checkpoint's time goes on a new GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeasureTimes {
    pub counterfact: f64,
    pub known: f64,
    pub perplexity: f64,
    pub agreement: f64,
    pub fluency: f64,
    pub spectral: f64,
}

impl std::fmt::Display for MeasureTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CounterFact {:.1} s, known facts {:.1} s, perplexity {:.1} s, agreement {:.1} s, fluency {:.1} s, spectral {:.1} s",
            self.counterfact, self.known, self.perplexity, self.agreement, self.fluency, self.spectral
        )
    }
}

/// What a checkpoint measures; built once per arm.
pub struct Measures {
    /// Requests sampled per CounterFact set (evenly spaced; 0: all).
    pub sample: usize,
    pub known: Vec<Fact>,
    pub prose: Option<ProseSet>,
    /// The unedited model's next-token log-probabilities after the agreement prompts.
    pub reference: Option<Vec<Vec<f32>>>,
    pub fluency_prompts: usize,
    pub fluency_tokens: usize,
    /// Original weight and top-k basis of every edited matrix (spectral diagnostics), if on.
    pub spectral: Vec<(String, Tensor, Basis)>,
    pub svd: SvdOptions,
    /// The unedited model's `locality_top` of the requests checkpoints sample, by request index
    /// (EasyEdit's locality of a sampled set is measured when all of its requests are here).
    pub locality_reference: std::collections::BTreeMap<usize, Vec<Vec<u32>>>,
}

/// `n` indices spread evenly over 0..len (all of them when n is 0 or ≥ len).
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    if n == 0 || n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| i * len / n).collect()
}

impl Measures {
    /// The basis of the guard in the form the diagnostics take.
    pub fn basis_of(g: &SpectralGuard) -> Basis {
        Basis { u: g.u.clone(), v: g.v.clone(), sigma: g.info.sigma.clone() }
    }

    /// The request indices a checkpoint after `edits` samples (the edits since `recent_from`,
    /// then all edits so far).
    pub fn sampled(&self, recent_from: usize, edits: usize) -> [Vec<usize>; 2] {
        let from = recent_from.min(edits);
        [spread(edits - from, self.sample).into_iter().map(|i| from + i).collect(), spread(edits, self.sample)]
    }

    /// Measures `model` after the first `edits` of `requests`; `recent_from`: where the edits
    /// since the previous checkpoint start.
    pub fn checkpoint(&self, model: &GpuModel, tok: &Tok, arm: &str, requests: &[EditRequest], edits: usize, recent_from: usize, batches: usize, edit_seconds: f64) -> Result<Checkpoint> {
        let t = std::time::Instant::now();
        let mut split = MeasureTimes::default();
        let mut lap = std::time::Instant::now();
        let mut lap_into = |slot: &mut f64| *slot = std::mem::replace(&mut lap, std::time::Instant::now()).elapsed().as_secs_f64();
        // The two samples share requests (at the first checkpoint they are the same): each
        // request is scored once. A sample with a request that has no locality reference has
        // no locality.
        let [recent, all] = self.sampled(recent_from, edits.min(requests.len()));
        let union: Vec<usize> = recent.iter().chain(&all).copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let has_reference = |i: &usize| self.locality_reference.contains_key(i);
        let metrics: std::collections::BTreeMap<usize, FactMetrics> = if union.is_empty() {
            Default::default()
        } else {
            let sampled: Vec<EditRequest> = union.iter().map(|&i| requests[i].clone()).collect();
            let reference: Vec<Vec<Vec<u32>>> = union.iter().map(|i| self.locality_reference.get(i).cloned().unwrap_or_default()).collect();
            union.iter().copied().zip(facts_metrics_against(model, tok, &sampled, Some(&reference))?).collect()
        };
        let scores = |indices: &[usize]| -> Option<CfScores> {
            if indices.is_empty() {
                return None;
            }
            let mut s = cf_scores(&indices.iter().map(|i| metrics[i].clone()).collect::<Vec<_>>());
            if !indices.iter().all(has_reference) {
                s.locality = None;
            }
            Some(s)
        };
        let (recent, all) = (scores(&recent), scores(&all));
        lap_into(&mut split.counterfact);
        let known_checks = if self.known.is_empty() { None } else { Some(check_facts(model, tok, &self.known)?) };
        let known_correct = known_checks.as_ref().map(|c| c.iter().filter(|c| c.correct).count());
        let known_by_relation = known_checks.as_deref().map(by_relation).unwrap_or_default();
        let known_untouched = known_checks.as_deref().and_then(|c| untouched_relations(c, requests));
        let known_loss = known_checks.map(|c| known_loss(tok, &c, &requests[..edits.min(requests.len())])).transpose()?;
        lap_into(&mut split.known);
        let perplexity = match &self.prose {
            Some(p) if !p.perplexity.is_empty() => Some(perplexity(model, &p.perplexity, p.unscored, PassBudget::for_gpu(model.gpu()))?),
            _ => None,
        };
        lap_into(&mut split.perplexity);
        let agreement = match (&self.prose, &self.reference) {
            (Some(p), Some(r)) => Some(agreement(r, &next_token_logprobs(model, &p.agreement)?)?),
            _ => None,
        };
        lap_into(&mut split.agreement);
        // The same prompts at every checkpoint, spread over the run's requests (all edited by
        // its end), so that the curve moves with the model and not with its prompts. A request
        // without generation prompts (zsRE's, EasyEdit's records) generates after its rewrite
        // prompt, as EasyEdit's fluency does.
        let prompts: Vec<String> = spread(requests.len(), self.fluency_prompts)
            .into_iter()
            .take(self.fluency_prompts)
            .map(|i| requests[i].generation_prompts.first().cloned().unwrap_or_else(|| requests[i].full_prompt()))
            .collect();
        let fluency = fluency(model, tok, &prompts, self.fluency_tokens)?;
        lap_into(&mut split.fluency);
        let mut matrices = vec![];
        for (name, w0, basis) in &self.spectral {
            let d = diagnose(model.gpu(), name, model.tensor(name)?, w0, basis, &self.svd)?;
            matrices.push(MatrixState {
                matrix: name.clone(),
                k: d.k,
                leak_left: d.leak.left,
                leak_right: d.leak.right,
                weight_norm: d.weight_norm,
                drift: d.drift,
                sigma1: d.sigma.first().copied().unwrap_or(f64::NAN),
                sigma1_original: d.sigma_original.first().copied().unwrap_or(f64::NAN),
                left_similarity: d.left_similarity,
                right_similarity: d.right_similarity,
            });
        }
        lap_into(&mut split.spectral);
        Ok(Checkpoint {
            arm: arm.to_string(),
            edits,
            batches,
            edit_seconds,
            recent,
            all,
            known_correct,
            known_total: self.known.len(),
            known_loss,
            known_by_relation,
            known_untouched,
            perplexity,
            agreement,
            fluency,
            matrices,
            measure_seconds: t.elapsed().as_secs_f64(),
            measure_split: Some(split),
        })
    }
}

/// The checkpoints file of an arm: one JSON object per line, appended durably.
pub fn checkpoints_path(arm_dir: &Path) -> std::path::PathBuf {
    arm_dir.join("checkpoints.jsonl")
}

pub fn read_checkpoints(arm_dir: &Path) -> Result<Vec<Checkpoint>> {
    let path = checkpoints_path(arm_dir);
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Model { file: path.display().to_string(), detail: format!("cannot read: {e}") })?;
    let mut out = vec![];
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Checkpoint>(line) {
            Ok(c) => out.push(c),
            // A last line cut by a crash mid-write is dropped (and measured again); anything
            // else is damage worth stopping for.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(Error::Model { file: path.display().to_string(), detail: format!("line {}: {e}", i + 1) }),
        }
    }
    Ok(out)
}

/// Appends a checkpoint (rewriting the file through a temporary one, so a crash leaves either
/// the old or the new file).
pub fn append_checkpoint(arm_dir: &Path, c: &Checkpoint) -> Result<()> {
    let mut all = read_checkpoints(arm_dir)?;
    all.retain(|x| x.edits != c.edits);
    all.push(c.clone());
    all.sort_by_key(|x| x.edits);
    let mut text = String::new();
    for x in &all {
        text += &serde_json::to_string(x).map_err(|e| Error::Edit(format!("checkpoint to JSON: {e}")))?;
        text.push('\n');
    }
    crate::store::write_durable(&checkpoints_path(arm_dir), text.as_bytes())
}

/// One CSV row per checkpoint of every arm.
pub fn csv(rows: &[Checkpoint]) -> String {
    let mut s = String::from("arm,edits,batches,edit_seconds,efficacy,paraphrase,neighborhood,efficacy_all,paraphrase_all,neighborhood_all,known_correct,known_total,perplexity,kl,top1_agreement,fluency,max_leak,drift,weight_norm,sigma1,left_similarity,right_similarity,known_lost_sharing_an_edited_answer,known_lost_to_an_edit_target,known_by_relation,untouched_correct,untouched_total,rewrite_acc,rephrase_acc,locality,rewrite_acc_all,rephrase_acc_all,locality_all,portability,portability_all\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for c in rows {
        let m = &c.matrices;
        let agg = |pick: fn(&MatrixState) -> f64, max: bool| -> Option<f64> {
            if m.is_empty() {
                return None;
            }
            let v = m.iter().map(pick);
            Some(if max { v.fold(f64::NEG_INFINITY, f64::max) } else { v.sum::<f64>() / m.len() as f64 })
        };
        // CounterFact's three scores, or EasyEdit's three, of one sample.
        let scores = |s: Option<CfScores>, easyedit: bool| -> Vec<String> {
            let pick: [fn(&CfScores) -> Option<f64>; 3] = if easyedit { [|s| s.rewrite_acc, |s| s.rephrase_acc, |s| s.locality] } else { [|s| s.efficacy, |s| s.paraphrase, |s| s.neighborhood] };
            pick.iter().map(|p| f(s.as_ref().and_then(p))).collect()
        };
        let mut cols = vec![c.arm.clone(), c.edits.to_string(), c.batches.to_string(), format!("{:.1}", c.edit_seconds)];
        cols.extend(scores(c.recent, false));
        cols.extend(scores(c.all, false));
        cols.extend([
            c.known_correct.map_or(String::new(), |k| k.to_string()),
            c.known_total.to_string(),
            f(c.perplexity),
            f(c.agreement.map(|a| a.kl)),
            f(c.agreement.map(|a| a.top1)),
            f(c.fluency),
            f(agg(|x| x.leak_left.max(x.leak_right), true)),
            f(agg(|x| x.drift, false)),
            f(agg(|x| x.weight_norm, false)),
            f(agg(|x| x.sigma1, false)),
            f(agg(|x| x.left_similarity, false)),
            f(agg(|x| x.right_similarity, false)),
            c.known_loss.map_or(String::new(), |k| k.sharing_an_edited_answer.to_string()),
            c.known_loss.map_or(String::new(), |k| k.to_an_edit_target.to_string()),
            c.known_by_relation.iter().map(|r| format!("{}:{}/{}", r.relation, r.correct, r.total)).collect::<Vec<_>>().join(";"),
            c.known_untouched.map_or(String::new(), |k| k.correct.to_string()),
            c.known_untouched.map_or(String::new(), |k| k.total.to_string()),
        ]);
        cols.extend(scores(c.recent, true));
        cols.extend(scores(c.all, true));
        cols.extend([f(c.recent.and_then(|s| s.portability)), f(c.all.and_then(|s| s.portability))]);
        s += &cols.join(",");
        s.push('\n');
    }
    s
}

/// The final checkpoint of each arm in the paper's layout (efficacy, generalisation and
/// specificity over all edits, EasyEdit's token metrics beside them, then fluency and general
/// ability), as Markdown.
pub fn table(rows: &[Checkpoint]) -> String {
    let mut arms: Vec<&str> = rows.iter().map(|c| c.arm.as_str()).collect();
    arms.dedup();
    let mut s = String::from("| arm | edits | efficacy | generalisation | specificity | rewrite acc. | rephrase acc. | locality | portability | fluency | perplexity | KL from unedited | known facts kept | … of relations no edit touches | max leak into W0's top-k |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{:.1}", 100.0 * x));
    let num = |v: Option<f64>, d: usize| v.map_or("–".to_string(), |x| format!("{x:.d$}"));
    let mut seen = std::collections::BTreeSet::new();
    for arm in arms {
        if !seen.insert(arm) {
            continue;
        }
        let Some(last) = rows.iter().filter(|c| c.arm == arm).max_by_key(|c| c.edits) else { continue };
        let all = last.all.or(last.recent);
        let known = last.known_correct.map_or("–".to_string(), |k| format!("{k}/{}", last.known_total));
        let untouched = last.known_untouched.map_or("–".to_string(), |k| format!("{}/{}", k.correct, k.total));
        let leak = last.matrices.iter().map(|m| m.leak_left.max(m.leak_right)).fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        s += &format!(
            "| {arm} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {known} | {untouched} | {} |\n",
            last.edits,
            pct(all.and_then(|a| a.efficacy)),
            pct(all.and_then(|a| a.paraphrase)),
            pct(all.and_then(|a| a.neighborhood)),
            pct(all.and_then(|a| a.rewrite_acc)),
            pct(all.and_then(|a| a.rephrase_acc)),
            pct(all.and_then(|a| a.locality)),
            pct(all.and_then(|a| a.portability)),
            num(last.fluency, 2),
            num(last.perplexity, 2),
            last.agreement.map_or("–".to_string(), |a| format!("{:.1e}", a.kl)),
            leak.map_or("–".to_string(), |x| format!("{x:.1e}")),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arm: &str, edits: usize, eff: f64) -> Checkpoint {
        let s = CfScores { requests: 10, efficacy: Some(eff), paraphrase: Some(0.5), neighborhood: Some(0.9), rewrite_acc: Some(0.7), rephrase_acc: Some(0.6), locality: Some(0.95), portability: Some(0.4) };
        Checkpoint {
            arm: arm.into(),
            edits,
            batches: edits / 10,
            edit_seconds: 1.0,
            recent: Some(s),
            all: Some(s),
            known_correct: Some(7),
            known_total: 10,
            known_loss: Some(KnownLoss { lost: 3, sharing_an_edited_answer: 2, to_an_edit_target: 1 }),
            known_by_relation: vec![RelationRetention { relation: "P36".into(), correct: 2, total: 3 }],
            known_untouched: Some(Retained { correct: 2, total: 3 }),
            perplexity: Some(20.0),
            agreement: Some(Agreement { kl: 0.01, top1: 0.95 }),
            fluency: Some(5.0),
            matrices: vec![MatrixState { matrix: "m".into(), k: 3, leak_left: 1e-6, leak_right: 2e-6, weight_norm: 1.0, drift: 0.1, sigma1: 2.0, sigma1_original: 2.0, left_similarity: 1.0, right_similarity: 1.0 }],
            measure_seconds: 0.0,
            measure_split: Some(MeasureTimes { counterfact: 1.0, ..Default::default() }),
        }
    }

    /// A checkpoints file written before the lost facts' attribution and the time per measure
    /// were recorded still reads (an experiment continues across the change).
    #[test]
    fn a_checkpoint_without_the_newer_fields_reads() {
        let mut v = serde_json::to_value(row("a", 10, 0.9)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("known_loss");
        o.remove("measure_split");
        o.remove("known_by_relation");
        o.remove("known_untouched");
        let back: Checkpoint = serde_json::from_value(v).unwrap();
        assert_eq!((back.known_loss, back.measure_split, back.known_untouched), (None, None, None));
        assert!(back.known_by_relation.is_empty());
        assert_eq!(back.edits, 10);
    }

    #[test]
    fn spread_picks_evenly_and_all_when_asked() {
        assert_eq!(spread(10, 3), vec![0, 3, 6]);
        assert_eq!(spread(4, 0), vec![0, 1, 2, 3]);
        assert_eq!(spread(4, 9), vec![0, 1, 2, 3]);
        assert!(spread(0, 5).is_empty());
    }

    #[test]
    fn checkpoints_append_replace_and_survive_a_cut_last_line() {
        let dir = std::env::temp_dir().join(format!("revive-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        append_checkpoint(&dir, &row("a", 20, 0.5)).unwrap();
        append_checkpoint(&dir, &row("a", 10, 0.9)).unwrap();
        append_checkpoint(&dir, &row("a", 20, 0.4)).unwrap();
        let got = read_checkpoints(&dir).unwrap();
        assert_eq!(got.iter().map(|c| (c.edits, c.recent.unwrap().efficacy)).collect::<Vec<_>>(), vec![(10, Some(0.9)), (20, Some(0.4))]);
        // A crash in the middle of a line: the cut line is dropped, the rest read.
        let path = checkpoints_path(&dir);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"arm\": \"a\", \"edi");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_checkpoints(&dir).unwrap().len(), 2);
        // Damage inside the file is an error naming it.
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        let e = read_checkpoints(&dir).unwrap_err().to_string();
        assert!(e.contains("checkpoints.jsonl") && e.contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn table_and_csv_show_each_arms_last_checkpoint() {
        let rows = vec![row("memit-none", 10, 0.9), row("memit-none", 20, 0.6), row("memit-0.5", 20, 0.8)];
        let t = table(&rows);
        assert!(t.contains("| memit-none | 20 | 60.0 | 50.0 | 90.0 | 70.0 | 60.0 | 95.0 | 40.0 |") && t.contains("| memit-0.5 | 20 | 80.0 |"), "{t}");
        assert!(t.contains("| 7/10 | 2/3 |"), "{t}");
        assert_eq!(t.lines().count(), 4);
        let c = csv(&rows);
        assert_eq!(c.lines().count(), 4);
        assert!(c.lines().nth(2).unwrap().starts_with("memit-none,20,2,1.0,0.600000,"), "{c}");
        assert!(c.lines().nth(2).unwrap().ends_with(",P36:2/3,2,3,0.700000,0.600000,0.950000,0.700000,0.600000,0.950000,0.400000,0.400000"), "{c}");
    }
}
