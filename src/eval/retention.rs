//! Retention of known facts: does the model's greedy next token after a prompt start the
//! expected answer? Used to pick facts the unedited model knows and to see what edits did to
//! them.

use crate::error::{Error, Result};
use crate::model::forward::GpuModel;
use crate::model::generate::score_tokens_reporting;
use crate::model::Tok;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub prompt: String,
    /// The expected continuation, e.g. " Paris".
    pub answer: String,
    /// Wikidata's id of the relation ("P17" a city's country, "P36" a country's capital), where
    /// the file gives it: retention is reported per relation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FactCheck {
    pub prompt: String,
    pub answer: String,
    pub relation_id: Option<String>,
    /// The model's greedy next token.
    pub got: String,
    pub correct: bool,
    /// log p of the answer's first token.
    pub logp: f64,
}

pub fn load_facts(path: &Path) -> Result<Vec<Fact>> {
    let file = path.display().to_string();
    let text = crate::store::read_text(path)?;
    let facts: Vec<Fact> = serde_json::from_str(&text).map_err(|e| Error::Model { file: file.clone(), detail: format!("expected a list of {{\"prompt\", \"answer\"}}: {e}") })?;
    for (i, f) in facts.iter().enumerate() {
        if f.prompt.trim().is_empty() || f.answer.trim().is_empty() {
            return Err(Error::Model { file: file.clone(), detail: format!("fact {i}: empty prompt or answer") });
        }
    }
    Ok(facts)
}

/// Checks every fact in planned passes; the greedy token and the answer's log-probability
/// come from the logits on the GPU (a vocabulary-wide row is never read back).
pub fn check_facts(model: &GpuModel, tok: &Tok, facts: &[Fact]) -> Result<Vec<FactCheck>> {
    check_facts_reporting(model, tok, facts, &mut |_, _| {})
}

/// `check_facts` telling `on_pass(done, passes)` as its scoring passes come back.
pub fn check_facts_reporting(model: &GpuModel, tok: &Tok, facts: &[Fact], on_pass: &mut dyn FnMut(usize, usize)) -> Result<Vec<FactCheck>> {
    if facts.is_empty() {
        return Ok(vec![]);
    }
    let mut pairs = vec![];
    for (i, f) in facts.iter().enumerate() {
        let first = *tok.encode(&f.answer)?.first().ok_or_else(|| Error::Edit(format!("known fact {i}: the answer {:?} has no tokens", f.answer)))?;
        let prompt = tok.encode_prompt(&f.prompt)?;
        if prompt.len() == tok.start().len() {
            return Err(Error::Edit(format!("known fact {i}: the prompt {:?} has no tokens", f.prompt)));
        }
        pairs.push((prompt, vec![first]));
    }
    let scored = score_tokens_reporting(model, &pairs, on_pass)?;
    facts
        .iter()
        .zip(pairs.iter().zip(scored))
        .map(|(f, ((_, first), s))| {
            Ok(FactCheck {
                prompt: f.prompt.clone(),
                answer: f.answer.clone(),
                relation_id: f.relation_id.clone(),
                got: tok.decode(&[s[0].top])?,
                correct: s[0].top == first[0],
                logp: s[0].logprob,
            })
        })
        .collect()
}

/// Where the known facts a model no longer answers went, against the edits made so far: an
/// edit pushes its new target and pulls its old answer, and a known fact that shares that old
/// answer (another city of the same country) or now answers with a new target was most likely
/// moved by the edits rather than by damage to the model at large.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownLoss {
    /// Known facts not answered any more.
    pub lost: usize,
    /// … whose answer is the old answer (target_true) of an edited request.
    pub sharing_an_edited_answer: usize,
    /// … whose greedy token now is the first token of an edited request's target_new.
    pub to_an_edit_target: usize,
}

pub fn known_loss(tok: &Tok, checks: &[FactCheck], edited: &[crate::edit::request::EditRequest]) -> Result<KnownLoss> {
    let mut old_answers = std::collections::HashSet::new();
    let mut new_first = std::collections::HashSet::new();
    for r in edited {
        if let Some(t) = &r.target_true {
            old_answers.insert(t.trim());
        }
        if let Some(&first) = tok.encode(&r.target_new)?.first() {
            new_first.insert(tok.decode(&[first])?);
        }
    }
    let lost: Vec<&FactCheck> = checks.iter().filter(|c| !c.correct).collect();
    Ok(KnownLoss {
        lost: lost.len(),
        sharing_an_edited_answer: lost.iter().filter(|c| old_answers.contains(c.answer.trim())).count(),
        to_an_edit_target: lost.iter().filter(|c| new_first.contains(&c.got)).count(),
    })
}

/// Known facts still answered of the relations none of `edited` has (facts without a relation
/// are not counted): knowledge the edits never aimed at. None when there is no such fact, or
/// when no edited request says its relation (then nothing is known to be untouched).
pub fn untouched_relations(checks: &[FactCheck], edited: &[crate::edit::request::EditRequest]) -> Option<Retained> {
    let relations: std::collections::HashSet<&str> = edited.iter().filter_map(|r| r.relation_id.as_deref()).collect();
    if relations.is_empty() {
        return None;
    }
    let control: Vec<&FactCheck> = checks.iter().filter(|c| c.relation_id.as_deref().is_some_and(|r| !relations.contains(r))).collect();
    (!control.is_empty()).then(|| Retained { correct: control.iter().filter(|c| c.correct).count(), total: control.len() })
}

/// How many of a set of facts are still answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub correct: usize,
    pub total: usize,
}

/// Known facts still answered, per relation (facts without one count as "other").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationRetention {
    pub relation: String,
    pub correct: usize,
    pub total: usize,
}

pub fn by_relation(checks: &[FactCheck]) -> Vec<RelationRetention> {
    let mut counts: std::collections::BTreeMap<&str, (usize, usize)> = std::collections::BTreeMap::new();
    for c in checks {
        let e = counts.entry(c.relation_id.as_deref().unwrap_or("other")).or_default();
        e.0 += usize::from(c.correct);
        e.1 += 1;
    }
    counts.into_iter().map(|(r, (correct, total))| RelationRetention { relation: r.to_string(), correct, total }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::request::EditRequest;

    fn check(relation: Option<&str>, correct: bool) -> FactCheck {
        FactCheck { prompt: "p".into(), answer: " a".into(), relation_id: relation.map(str::to_string), got: " a".into(), correct, logp: 0.0 }
    }

    fn edit(relation: Option<&str>) -> EditRequest {
        EditRequest {
            case_id: None,
            subject: "S".into(),
            prompt: "{} is".into(),
            target_new: " b".into(),
            target_true: None,
            paraphrase_prompts: vec![],
            neighborhood_prompts: vec![],
            generation_prompts: vec![],
            relation_id: relation.map(str::to_string),
            locality: vec![],
            portability: vec![],
        }
    }

    #[test]
    fn untouched_relations_are_those_no_edit_has() {
        let checks = [check(Some("P17"), false), check(Some("P36"), true), check(Some("P36"), false), check(Some("P246"), true), check(None, false)];
        // P17 is edited; P36 and P246 are not; a fact without a relation is not counted.
        assert_eq!(untouched_relations(&checks, &[edit(Some("P17")), edit(None)]), Some(Retained { correct: 2, total: 3 }));
        assert_eq!(untouched_relations(&checks, &[edit(Some("P17")), edit(Some("P36"))]), Some(Retained { correct: 1, total: 1 }));
        // Edits that do not say their relation: nothing is known to be untouched.
        assert_eq!(untouched_relations(&checks, &[edit(None)]), None);
        assert_eq!(untouched_relations(&checks[..1], &[edit(Some("P17"))]), None);
    }
}
