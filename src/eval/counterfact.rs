//! CounterFact metrics of one request: the probabilities of target_new and target_true after
//! the rewrite prompt, and the success rates on paraphrases and neighbourhood prompts. A prompt
//! "prefers" a target when that target's mean per-token NLL is lower (CounterFact's rule, which
//! does not favour short targets).
//!
//! Beside them, EasyEdit's token metrics, as its `token_em` evaluation defines them: rewrite and
//! rephrase accuracy, the share of target_new's tokens the model ranks first when each is read
//! after the prompt and the tokens before it (teacher forcing); and locality, the share of the
//! model's teacher-forced predictions along each locality prompt's answer that an edit left as
//! they were (the request's locality pairs, or else its neighbourhood prompts with target_true,
//! which is how EasyEdit reads CounterFact); and portability, the rewrite accuracy of the
//! answers that follow from the new fact (KnowEdit's reasoning and alias prompts), averaged
//! over a request's pairs. EasyEdit tokenizes prompt + " " + target as one
//! string; here the prompt and the target (which carries its leading space) are tokenized
//! apart, as every other score of this program does.

use crate::edit::request::EditRequest;
use crate::error::Result;
use crate::model::forward::GpuModel;
use crate::model::generate::{score_tokens, TokenScore};
use crate::model::Tok;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetScore {
    /// p(target | prompt): the product over its tokens.
    pub p: f64,
    /// Mean NLL per token.
    pub nll: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FactMetrics {
    pub new: TargetScore,
    pub true_: Option<TargetScore>,
    /// Rewrite prompt prefers target_new (needs target_true).
    pub efficacy: Option<bool>,
    /// Share of paraphrase prompts preferring target_new.
    pub paraphrase: Option<f64>,
    /// Share of neighbourhood prompts still preferring target_true.
    pub neighborhood: Option<f64>,
    /// EasyEdit's rewrite accuracy: the share of target_new's tokens ranked first after the
    /// rewrite prompt.
    pub rewrite_acc: f64,
    /// EasyEdit's rephrase accuracy: the same, averaged over the paraphrases.
    pub rephrase_acc: Option<f64>,
    /// The model's top token at each answer position of each locality prompt: what locality
    /// compares before and after an edit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locality_top: Vec<Vec<u32>>,
    /// EasyEdit's locality against a reference's `locality_top` (the model before the edit):
    /// per prompt the share of positions predicted the same, averaged over the prompts.
    pub locality: Option<f64>,
    /// EasyEdit's portability: per portability pair the share of the answer's tokens ranked
    /// first, averaged over the pairs (none without pairs).
    pub portability: Option<f64>,
}

fn score(tokens: &[TokenScore]) -> TargetScore {
    let sum: f64 = tokens.iter().map(|t| t.logprob).sum();
    TargetScore { p: sum.exp(), nll: -sum / tokens.len() as f64 }
}

/// The share of `tokens` that the model ranked first where each was read.
fn token_accuracy(scored: &[TokenScore], tokens: &[u32]) -> f64 {
    scored.iter().zip(tokens).filter(|(s, &t)| s.top == t).count() as f64 / tokens.len() as f64
}

/// EasyEdit's locality of each prompt: the share of positions where `now` predicts what
/// `before` did (a prompt whose answer length differs counts as changed).
fn locality_shares(before: &[Vec<u32>], now: &[Vec<u32>]) -> Vec<f64> {
    now.iter()
        .enumerate()
        .map(|(i, n)| match before.get(i) {
            Some(b) if b.len() == n.len() && !n.is_empty() => b.iter().zip(n).filter(|(x, y)| x == y).count() as f64 / n.len() as f64,
            _ => 0.0,
        })
        .collect()
}

/// The mean over categories of the mean within each (pairs without a category are one), as
/// EasyEdit reports KnowEdit's locality and portability; none without values.
fn category_mean(values: &[f64], categories: &[Option<&str>]) -> Option<f64> {
    let mut groups: std::collections::BTreeMap<Option<&str>, (f64, usize)> = Default::default();
    for (v, c) in values.iter().zip(categories) {
        let g = groups.entry(*c).or_default();
        *g = (g.0 + v, g.1 + 1);
    }
    (!groups.is_empty()).then(|| groups.values().map(|(s, n)| s / *n as f64).sum::<f64>() / groups.len() as f64)
}

/// Scores every prompt of one request against both targets.
pub fn fact_metrics(model: &GpuModel, tok: &Tok, req: &EditRequest) -> Result<FactMetrics> {
    Ok(facts_metrics(model, tok, std::slice::from_ref(req))?.remove(0))
}

/// Scores every prompt of every request against both targets, all requests' prompts together in
/// as few forward passes as `score_tokens`'s budget allows (a MEMIT batch of 100 took 200 passes
/// before and after its edit when each request had its own). No locality without a reference.
pub fn facts_metrics(model: &GpuModel, tok: &Tok, reqs: &[EditRequest]) -> Result<Vec<FactMetrics>> {
    facts_metrics_against(model, tok, reqs, None)
}

/// `facts_metrics` with each request's locality measured against `reference[r]`, the
/// `locality_top` of request r measured on the model before the edit.
pub fn facts_metrics_against(model: &GpuModel, tok: &Tok, reqs: &[EditRequest], reference: Option<&[Vec<Vec<u32>>]>) -> Result<Vec<FactMetrics>> {
    if reference.is_some_and(|r| r.len() != reqs.len()) {
        return Err(crate::error::Error::shape("locality", format!("{} references for {} requests", reference.map_or(0, <[_]>::len), reqs.len())));
    }
    let mut pairs = vec![];
    let mut layout = vec![];
    for req in reqs {
        let new = tok.encode(&req.target_new)?;
        let truth = req.target_true.as_deref().map(|t| tok.encode(t)).transpose()?;
        let prompts: Vec<String> = std::iter::once(req.full_prompt())
            .chain(req.paraphrase_prompts.iter().cloned())
            .chain(req.neighborhood_prompts.iter().cloned())
            .collect();
        for p in &prompts {
            let ids = tok.encode_prompt(p)?;
            pairs.push((ids.clone(), new.clone()));
            if let Some(t) = &truth {
                pairs.push((ids, t.clone()));
            }
        }
        let n_locality = push_locality_pairs(tok, req, &mut pairs)?;
        let mut answers = vec![];
        for p in &req.portability {
            answers.push(tok.encode(&p.answer)?);
            pairs.push((tok.encode_prompt(&p.prompt)?, answers.last().expect("pushed").clone()));
        }
        layout.push((prompts.len(), new, n_locality, answers));
    }
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let mut scored = score_tokens(model, &pairs)?.into_iter();
    Ok(reqs
        .iter()
        .zip(layout)
        .enumerate()
        .map(|(r, (req, (n_prompts, new, n_locality, answers)))| {
            let per = if req.target_true.is_some() { 2 } else { 1 };
            let main: Vec<Vec<TokenScore>> = scored.by_ref().take(n_prompts * per).collect();
            let locality: Vec<Vec<TokenScore>> = scored.by_ref().take(n_locality).collect();
            let accuracies: Vec<f64> = answers.iter().map(|a| token_accuracy(&scored.next().expect("one score per pair"), a)).collect();
            let categories: Vec<Option<&str>> = req.portability.iter().map(|p| p.category.as_deref()).collect();
            metrics_of(req, &main, per, &new, &locality, reference.map(|x| x[r].as_slice()), category_mean(&accuracies, &categories))
        })
        .collect())
}

/// What EasyEdit's locality reads of a request: its locality pairs, or else its neighbourhood
/// prompts with target_true (EasyEdit's CounterFact). Those are the very pairs the
/// neighbourhood score reads, and `score_tokens` scores a pair asked for twice once.
fn locality_pairs(req: &EditRequest) -> Vec<(&str, &str, Option<&str>)> {
    if !req.locality.is_empty() {
        return req.locality.iter().map(|l| (l.prompt.as_str(), l.answer.as_str(), l.category.as_deref())).collect();
    }
    match &req.target_true {
        Some(t) => req.neighborhood_prompts.iter().map(|p| (p.as_str(), t.as_str(), None)).collect(),
        None => vec![],
    }
}

/// Appends `req`'s locality pairs, tokenized, to `pairs`; how many.
fn push_locality_pairs(tok: &Tok, req: &EditRequest, pairs: &mut Vec<(Vec<u32>, Vec<u32>)>) -> Result<usize> {
    let locality = locality_pairs(req);
    for (prompt, answer, _) in &locality {
        pairs.push((tok.encode_prompt(prompt)?, tok.encode(answer)?));
    }
    Ok(locality.len())
}

fn tops(scored: &[Vec<TokenScore>]) -> Vec<Vec<u32>> {
    scored.iter().map(|t| t.iter().map(|s| s.top).collect()).collect()
}

/// Each request's `locality_top` alone, without its other scores: the reference a later
/// measure's locality compares against.
pub fn locality_tops(model: &GpuModel, tok: &Tok, reqs: &[EditRequest]) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut pairs = vec![];
    let mut counts = vec![];
    for req in reqs {
        counts.push(push_locality_pairs(tok, req, &mut pairs)?);
    }
    let mut scored = if pairs.is_empty() { vec![] } else { score_tokens(model, &pairs)? }.into_iter();
    Ok(counts.into_iter().map(|n| tops(&scored.by_ref().take(n).collect::<Vec<_>>())).collect())
}

/// One request's metrics from its scores: per prompt (rewrite, paraphrases, neighbours) the
/// tokens of target_new (`new`) and, when `per` is 2, of target_true; then its locality pairs
/// (`locality_pairs`); its portability, already averaged.
fn metrics_of(req: &EditRequest, scored: &[Vec<TokenScore>], per: usize, new: &[u32], locality: &[Vec<TokenScore>], reference: Option<&[Vec<u32>]>, portability: Option<f64>) -> FactMetrics {
    let scores: Vec<(TargetScore, Option<TargetScore>)> =
        scored.chunks(per).map(|c| (score(&c[0]), c.get(1).map(|t| score(t)))).collect();
    let prefers_new = |s: &(TargetScore, Option<TargetScore>)| s.1.as_ref().map(|t| s.0.nll < t.nll);
    let share = |xs: &[(TargetScore, Option<TargetScore>)], want_new: bool| -> Option<f64> {
        if xs.is_empty() || per == 1 {
            return None;
        }
        Some(xs.iter().filter(|s| prefers_new(s) == Some(want_new)).count() as f64 / xs.len() as f64)
    };
    let n_para = req.paraphrase_prompts.len();
    let paraphrases = &scored[per..per * (1 + n_para)];
    let rephrase_acc = (n_para > 0).then(|| paraphrases.chunks(per).map(|c| token_accuracy(&c[0], new)).sum::<f64>() / n_para as f64);
    let locality_top = tops(locality);
    FactMetrics {
        new: scores[0].0.clone(),
        true_: scores[0].1.clone(),
        efficacy: prefers_new(&scores[0]),
        paraphrase: share(&scores[1..1 + n_para], true),
        neighborhood: share(&scores[1 + n_para..], false),
        rewrite_acc: token_accuracy(&scored[0], new),
        rephrase_acc,
        locality: reference.and_then(|r| {
            let categories: Vec<Option<&str>> = locality_pairs(req).iter().map(|l| l.2).collect();
            category_mean(&locality_shares(r, &locality_top), &categories)
        }),
        locality_top,
        portability,
    }
}

/// CounterFact's three scores over a set of edited requests, and EasyEdit's three.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CfScores {
    pub requests: usize,
    /// Rewrite prompts preferring target_new (the role EasyEdit calls reliability).
    pub efficacy: Option<f64>,
    /// Paraphrases preferring target_new (generalisation).
    pub paraphrase: Option<f64>,
    /// Neighbourhood prompts still preferring target_true (specificity).
    pub neighborhood: Option<f64>,
    /// EasyEdit's token metrics, as its own evaluation computes them (module comment); absent
    /// from results written before they were measured.
    #[serde(default)]
    pub rewrite_acc: Option<f64>,
    #[serde(default)]
    pub rephrase_acc: Option<f64>,
    #[serde(default)]
    pub locality: Option<f64>,
    #[serde(default)]
    pub portability: Option<f64>,
}

pub fn cf_scores(per: &[FactMetrics]) -> CfScores {
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    CfScores {
        requests: per.len(),
        efficacy: mean(per.iter().filter_map(|m| m.efficacy.map(|e| if e { 1.0 } else { 0.0 })).collect()),
        paraphrase: mean(per.iter().filter_map(|m| m.paraphrase).collect()),
        neighborhood: mean(per.iter().filter_map(|m| m.neighborhood).collect()),
        rewrite_acc: mean(per.iter().map(|m| m.rewrite_acc).collect()),
        rephrase_acc: mean(per.iter().filter_map(|m| m.rephrase_acc).collect()),
        locality: mean(per.iter().filter_map(|m| m.locality).collect()),
        portability: mean(per.iter().filter_map(|m| m.portability).collect()),
    }
}

/// The session's measure (edit::session::Measure): CounterFact metrics of every request of a
/// batch, their means, and optionally the known facts the model still answers.
pub struct BatchMetrics {
    pub known: Vec<crate::eval::retention::Fact>,
    pub scope: BatchScope,
}

/// When a batch's requests are scored: before the edit and after it, after it only (its
/// locality then has no reference), or never (`null` in the journal). The scores take about
/// half a MEMIT batch's time on a GPU, and an experiment's checkpoints score their own samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchScope {
    #[default]
    BeforeAndAfter,
    After,
    Off,
}

impl BatchMetrics {
    pub fn new(known: Vec<crate::eval::retention::Fact>) -> BatchMetrics {
        BatchMetrics { known, scope: BatchScope::default() }
    }
}

/// The `locality_top` of each request in a measure's JSON (`requests[r].locality_top`), if the
/// measure has it for every request that reads locality pairs (a measure written before
/// locality was measured has none: then there is no reference).
fn measured_locality_tops(measured: &serde_json::Value, requests: &[EditRequest]) -> Option<Vec<Vec<Vec<u32>>>> {
    let measured = measured.get("requests")?.as_array()?;
    if measured.len() != requests.len() {
        return None;
    }
    measured
        .iter()
        .zip(requests)
        .map(|(m, req)| match m.get("locality_top") {
            Some(t) => serde_json::from_value(t.clone()).ok(),
            None => locality_pairs(req).is_empty().then(Vec::new),
        })
        .collect()
}

impl crate::edit::session::Measure for BatchMetrics {
    fn measure(&mut self, model: &GpuModel, tok: &Tok, requests: &[EditRequest], before: Option<&serde_json::Value>) -> Result<serde_json::Value> {
        // The session asks before the edit with no earlier measure, after it with the one before.
        let skip = match self.scope {
            BatchScope::BeforeAndAfter => false,
            BatchScope::After => before.is_none(),
            BatchScope::Off => true,
        };
        if skip {
            return Ok(serde_json::Value::Null);
        }
        let reference = before.and_then(|b| measured_locality_tops(b, requests));
        let per = facts_metrics_against(model, tok, requests, reference.as_deref())?;
        let CfScores { efficacy, paraphrase, neighborhood, rewrite_acc, rephrase_acc, locality, portability, .. } = cf_scores(&per);
        let p_new = (!per.is_empty()).then(|| per.iter().map(|m| m.new.p).sum::<f64>() / per.len() as f64);
        let known = if self.known.is_empty() {
            None
        } else {
            let checks = crate::eval::retention::check_facts(model, tok, &self.known)?;
            Some(checks.iter().filter(|c| c.correct).count())
        };
        Ok(serde_json::json!({
            "efficacy": efficacy,
            "paraphrase": paraphrase,
            "neighborhood": neighborhood,
            "rewrite_acc": rewrite_acc,
            "rephrase_acc": rephrase_acc,
            "locality": locality,
            "portability": portability,
            "p_new": p_new,
            "known_correct": known,
            "known_total": self.known.len(),
            "requests": per,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_and_portability_average_within_categories_first() {
        // Two Relation_Specificity prompts kept whole and half, one Forgetfulness prompt lost:
        // (1 + 0.5) / 2 and 0, averaged: 0.375, not the pooled 0.5.
        let before = vec![vec![1, 2], vec![3, 4], vec![5]];
        let now = vec![vec![1, 2], vec![3, 9], vec![6]];
        let shares = locality_shares(&before, &now);
        assert_eq!(shares, [1.0, 0.5, 0.0]);
        let cats = [Some("Relation_Specificity"), Some("Relation_Specificity"), Some("Forgetfulness")];
        assert_eq!(category_mean(&shares, &cats), Some(0.375));
        // Without categories (CounterFact's neighbours), the plain mean; nothing, no score.
        assert_eq!(category_mean(&shares, &[None; 3]), Some(0.5));
        assert_eq!(category_mean(&[], &[]), None);
        // A prompt whose answer length changed, or one the reference lacks, counts as changed.
        assert_eq!(locality_shares(&before[..1], &[vec![1], vec![3, 4]]), [0.0, 0.0]);
    }
}
