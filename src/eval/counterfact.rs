//! CounterFact metrics of one request: the probabilities of target_new and target_true after
//! the rewrite prompt, and the success rates on paraphrases and neighbourhood prompts. A prompt
//! "prefers" a target when that target's mean per-token NLL is lower (CounterFact's rule, which
//! does not favour short targets).

use crate::edit::request::EditRequest;
use crate::error::Result;
use crate::model::forward::GpuModel;
use crate::model::generate::score_many;
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
}

fn score(lp: &[f64]) -> TargetScore {
    let sum: f64 = lp.iter().sum();
    TargetScore { p: sum.exp(), nll: -sum / lp.len() as f64 }
}

/// Scores every prompt of one request against both targets.
pub fn fact_metrics(model: &GpuModel, tok: &Tok, req: &EditRequest) -> Result<FactMetrics> {
    Ok(facts_metrics(model, tok, std::slice::from_ref(req))?.remove(0))
}

/// Scores every prompt of every request against both targets, all requests' prompts together in
/// as few forward passes as `score_many`'s budget allows (a MEMIT batch of 100 took 200 passes
/// before and after its edit when each request had its own).
pub fn facts_metrics(model: &GpuModel, tok: &Tok, reqs: &[EditRequest]) -> Result<Vec<FactMetrics>> {
    let mut pairs = vec![];
    let mut prompts_of = vec![];
    for req in reqs {
        let new = tok.encode(&req.target_new)?;
        let truth = req.target_true.as_deref().map(|t| tok.encode(t)).transpose()?;
        let prompts: Vec<String> = std::iter::once(req.full_prompt())
            .chain(req.paraphrase_prompts.iter().cloned())
            .chain(req.neighborhood_prompts.iter().cloned())
            .collect();
        for p in &prompts {
            let ids = tok.encode(p)?;
            pairs.push((ids.clone(), new.clone()));
            if let Some(t) = &truth {
                pairs.push((ids, t.clone()));
            }
        }
        prompts_of.push(prompts.len());
    }
    if pairs.is_empty() {
        return Ok(vec![]);
    }
    let mut lps = score_many(model, &pairs)?.into_iter();
    Ok(reqs
        .iter()
        .zip(prompts_of)
        .map(|(req, n_prompts)| {
            let per = if req.target_true.is_some() { 2 } else { 1 };
            let lp: Vec<Vec<f64>> = lps.by_ref().take(n_prompts * per).collect();
            metrics_of(req, &lp, per)
        })
        .collect())
}

/// One request's metrics from its scores: per prompt (rewrite, paraphrases, neighbours) the
/// log-probabilities of target_new and, when `per` is 2, of target_true.
fn metrics_of(req: &EditRequest, lps: &[Vec<f64>], per: usize) -> FactMetrics {
    let scores: Vec<(TargetScore, Option<TargetScore>)> =
        lps.chunks(per).map(|c| (score(&c[0]), c.get(1).map(|t| score(t)))).collect();
    let prefers_new = |s: &(TargetScore, Option<TargetScore>)| s.1.as_ref().map(|t| s.0.nll < t.nll);
    let share = |xs: &[(TargetScore, Option<TargetScore>)], want_new: bool| -> Option<f64> {
        if xs.is_empty() || per == 1 {
            return None;
        }
        Some(xs.iter().filter(|s| prefers_new(s) == Some(want_new)).count() as f64 / xs.len() as f64)
    };
    let n_para = req.paraphrase_prompts.len();
    FactMetrics {
        new: scores[0].0.clone(),
        true_: scores[0].1.clone(),
        efficacy: prefers_new(&scores[0]),
        paraphrase: share(&scores[1..1 + n_para], true),
        neighborhood: share(&scores[1 + n_para..], false),
    }
}

/// CounterFact's three scores over a set of edited requests, under EasyEdit's names too.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CfScores {
    pub requests: usize,
    /// Rewrite prompts preferring target_new (EasyEdit: rewrite accuracy).
    pub efficacy: Option<f64>,
    /// Paraphrases preferring target_new (EasyEdit: generalisation / rephrase).
    pub paraphrase: Option<f64>,
    /// Neighbourhood prompts still preferring target_true (EasyEdit: specificity / locality).
    pub neighborhood: Option<f64>,
}

pub fn cf_scores(per: &[FactMetrics]) -> CfScores {
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    CfScores {
        requests: per.len(),
        efficacy: mean(per.iter().filter_map(|m| m.efficacy.map(|e| if e { 1.0 } else { 0.0 })).collect()),
        paraphrase: mean(per.iter().filter_map(|m| m.paraphrase).collect()),
        neighborhood: mean(per.iter().filter_map(|m| m.neighborhood).collect()),
    }
}

/// The session's measure (edit::session::Measure): CounterFact metrics of every request of a
/// batch, their means, and optionally the known facts the model still answers.
pub struct BatchMetrics {
    pub known: Vec<crate::eval::retention::Fact>,
}

impl crate::edit::session::Measure for BatchMetrics {
    fn measure(&mut self, model: &GpuModel, tok: &Tok, requests: &[EditRequest]) -> Result<serde_json::Value> {
        let per = facts_metrics(model, tok, requests)?;
        let CfScores { efficacy, paraphrase, neighborhood, .. } = cf_scores(&per);
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
            "p_new": p_new,
            "known_correct": known,
            "known_total": self.known.len(),
            "requests": per,
        }))
    }
}
