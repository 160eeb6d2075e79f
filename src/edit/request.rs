//! Edit requests in a CounterFact-style JSON: a list of records
//!
//! ```json
//! {"case_id": 0, "subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is",
//!  "target_new": " English", "target_true": " French",
//!  "paraphrase_prompts": ["..."], "neighborhood_prompts": ["..."], "generation_prompts": ["..."]}
//! ```
//!
//! The original CounterFact layout (`requested_rewrite: {prompt, subject, target_new: {str},
//! target_true: {str}}` beside the prompt lists) reads too. Targets are continuations, so a
//! target without a leading space gets one, as ROME and EasyEdit do when they tokenize. zsRE
//! records (MEND's `subject`, `src`, `alt`, `answers`, `rephrase`, `loc`, `loc_ans`) and
//! EasyEdit's flat records (`prompt` with the subject written in, `ground_truth`,
//! `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`) read as well, and so do
//! KnowEdit's (the same keys, with `locality` and `portability` as dictionaries of
//! `[{prompt, ground_truth}]` lists per category, answers given as aliases).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    #[serde(default)]
    pub case_id: Option<u64>,
    pub subject: String,
    /// The relation with `{}` where the subject goes.
    pub prompt: String,
    pub target_new: String,
    #[serde(default)]
    pub target_true: Option<String>,
    #[serde(default)]
    pub paraphrase_prompts: Vec<String>,
    #[serde(default)]
    pub neighborhood_prompts: Vec<String>,
    #[serde(default)]
    pub generation_prompts: Vec<String>,
    /// Wikidata's id of the relation (CounterFact's `relation_id`, e.g. "P17"), where the file
    /// gives it: an experiment tells the known facts of relations no request edits (its
    /// control) from the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_id: Option<String>,
    /// Prompts whose answers the edit should leave alone, each with its answer (zsRE's question
    /// from Natural Questions; EasyEdit's locality prompts). Without them, EasyEdit's locality
    /// reads the neighbourhood prompts with target_true, as it does for CounterFact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locality: Vec<PromptAnswer>,
    /// Questions whose answers follow from the new fact (KnowEdit's reasoning, subject-alias
    /// and logical-generalisation prompts), each with the answer the edited model should give:
    /// EasyEdit's portability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability: Vec<PromptAnswer>,
}

/// A prompt and the continuation read after it: for locality, the model's own predictions
/// along the answer, before and after an edit, should agree; for portability, the edited model
/// should predict the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptAnswer {
    pub prompt: String,
    pub answer: String,
    /// KnowEdit's category (Relation_Specificity, Forgetfulness; Reasoning, Subject_Aliasing,
    /// Logical_Generalization): a request's score is the mean over its categories of the mean
    /// within each, as EasyEdit reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl PromptAnswer {
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        PromptAnswer { prompt: prompt.into(), answer: answer.into(), category: None }
    }
}

impl EditRequest {
    /// The prompt with the subject filled in.
    pub fn full_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }
}

fn field_err(file: &str, index: usize, field: &str, detail: impl std::fmt::Display) -> Error {
    Error::Model { file: file.to_string(), detail: format!("record {index}, field '{field}': {detail}") }
}

fn with_space(s: &str) -> String {
    if s.starts_with(char::is_whitespace) { s.to_string() } else { format!(" {s}") }
}

fn strings(v: &Value, file: &str, index: usize, field: &str) -> Result<Vec<String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| field_err(file, index, field, "expected a list of strings")))
            .collect(),
        Some(_) => Err(field_err(file, index, field, "expected a list of strings")),
    }
}

fn string(v: &Value, file: &str, index: usize, field: &str) -> Result<Option<String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // CounterFact writes targets as {"str": ..., "id": ...}.
        Some(Value::Object(o)) => match o.get("str") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(field_err(file, index, field, "expected a string or {\"str\": ...}")),
        },
        Some(_) => Err(field_err(file, index, field, "expected a string")),
    }
}

/// A string or a list of strings (EasyEdit writes either), as a list.
fn one_or_many(v: &Value, file: &str, index: usize, field: &str) -> Result<Vec<String>> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        _ => strings(v, file, index, field).map_err(|_| field_err(file, index, field, "expected a string or a list of strings")),
    }
}

/// `prompt` with the subject's first occurrence as `{}`.
fn template(prompt: &str, subject: &str, file: &str, index: usize, field: &str) -> Result<String> {
    if subject.trim().is_empty() || !prompt.contains(subject) {
        return Err(field_err(file, index, field, format!("{prompt:?} does not contain the subject {subject:?}")));
    }
    Ok(prompt.replacen(subject, "{}", 1))
}

/// Locality prompts and their answers, paired one to one.
fn locality(v: &Value, file: &str, index: usize, prompts: &str, answers: &str) -> Result<Vec<PromptAnswer>> {
    let (p, a) = (one_or_many(v, file, index, prompts)?, one_or_many(v, file, index, answers)?);
    if p.len() != a.len() {
        return Err(field_err(file, index, answers, format!("{} answers for {} prompts in '{prompts}'", a.len(), p.len())));
    }
    p.into_iter().zip(a).enumerate().map(|(i, (prompt, answer))| prompt_answer(prompt, &answer, file, index, [prompts, answers], i)).collect()
}

/// Pair `i`, its answer a continuation (with a leading space); neither may be empty.
/// `fields`: where the prompt and the answer came from, for errors.
fn prompt_answer(prompt: String, answer: &str, file: &str, index: usize, fields: [&str; 2], i: usize) -> Result<PromptAnswer> {
    if prompt.trim().is_empty() {
        return Err(field_err(file, index, fields[0], format!("prompt {i} is empty")));
    }
    if answer.trim().is_empty() {
        return Err(field_err(file, index, fields[1], format!("the answer of prompt {i} is empty")));
    }
    Ok(PromptAnswer { prompt, answer: with_space(answer), category: None })
}

/// This program's own layout: `locality` or `portability` as `[{"prompt", "answer"}]`.
fn own_pairs(v: &Value, file: &str, index: usize, field: &str) -> Result<Vec<PromptAnswer>> {
    let Some(list) = v.get(field) else { return Ok(vec![]) };
    let pairs: Vec<PromptAnswer> = serde_json::from_value(list.clone()).map_err(|e| field_err(file, index, field, format!("expected a list of {{\"prompt\", \"answer\"}}: {e}")))?;
    // The category stays: a request file this program wrote reads back scored as it was.
    pairs.into_iter().enumerate().map(|(i, l)| Ok(PromptAnswer { category: l.category, ..prompt_answer(l.prompt, &l.answer, file, index, [field, field], i)? })).collect()
}

/// The first answer of a KnowEdit `ground_truth`: a string, a list of answers, or a list of
/// alias lists (the first alias is the answer, as EasyEdit's KnowEdit runner takes it).
fn first_answer(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first().and_then(first_answer),
        _ => None,
    }
}

/// `[]`, `[[]]`, …: an answer list with nothing in it.
fn empty_list(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.first().is_none_or(empty_list))
}

/// KnowEdit's nested pairs, `{"Relation_Specificity": [{"prompt", "ground_truth"}], …}`: every
/// category's pairs (categories in name order; a null category is none), each prompt and answer
/// the first of its list where a list is given. A pair whose answer is blank or an empty list is
/// skipped, as EasyEdit's KnowEdit runner skips it, and counted in `skipped`.
fn nested_pairs(v: &Value, file: &str, index: usize, field: &str, skipped: &mut usize) -> Result<Vec<PromptAnswer>> {
    let Some(Value::Object(categories)) = v.get(field) else { return Ok(vec![]) };
    // EasyEdit's zsRE portability file (zsre_mend_eval_portability_gpt4.json) gives one
    // two-hop question per record, `{"New Question", "New Answer"}`, which its runner scores
    // as the category one_hop.
    if let (Some(q), Some(a)) = (categories.get("New Question"), categories.get("New Answer")) {
        let (q_field, a_field) = (format!("{field}.New Question"), format!("{field}.New Answer"));
        let q = first_answer(q).ok_or_else(|| field_err(file, index, &q_field, "expected a string"))?;
        let a = first_answer(a).ok_or_else(|| field_err(file, index, &a_field, "expected a string"))?;
        if a.trim().is_empty() {
            *skipped += 1;
            return Ok(vec![]);
        }
        let pair = prompt_answer(q.to_string(), a, file, index, [&q_field, &a_field], 0)?;
        return Ok(vec![PromptAnswer { category: Some("one_hop".into()), ..pair }]);
    }
    let mut out = vec![];
    for (category, items) in categories {
        let list = format!("{field}.{category}");
        let where_ = |i: usize| format!("{list}[{i}]");
        let items: &[Value] = match items {
            Value::Null => &[],
            Value::Array(a) => a,
            _ => return Err(field_err(file, index, &list, "expected a list of {\"prompt\", \"ground_truth\"}")),
        };
        for (i, item) in items.iter().enumerate() {
            let prompt = item.get("prompt").and_then(first_answer).ok_or_else(|| field_err(file, index, &where_(i), "no 'prompt' (a string, or a list whose first entry is one)"))?;
            let answer = match item.get("ground_truth") {
                Some(g) if empty_list(g) => "",
                g => g.and_then(first_answer).ok_or_else(|| field_err(file, index, &where_(i), "no 'ground_truth' (a string, or a list whose first entry is one)"))?,
            };
            if answer.trim().is_empty() {
                *skipped += 1;
                continue;
            }
            let pair = prompt_answer(prompt.to_string(), answer, file, index, [&list, &list], i)?;
            out.push(PromptAnswer { category: Some(category.clone()), ..pair });
        }
    }
    Ok(out)
}

/// Where a layout without neighbourhood or generation prompts keeps each part of a request.
struct FlatKeys {
    /// The whole prompt, the subject written in.
    prompt: &'static str,
    target_new: &'static str,
    /// The true answer, or a list whose first entry is.
    target_true: &'static str,
    paraphrases: &'static str,
    locality: [&'static str; 2],
}

/// A zsRE record (MEND's layout, as EasyEdit reads it): the question `src` holds the subject,
/// `alt` is the new answer, `answers[0]` the true one, `rephrase` a paraphrase, and `loc` a
/// question from Natural Questions with its answer `loc_ans` (locality). ROME's and MEMIT's
/// own zsRE evaluation reads the same file differently (it edits toward `answers[0]`, keeps
/// records without `alt`, and asks `loc + "?"`); numbers from here compare with EasyEdit's.
const ZSRE: FlatKeys = FlatKeys { prompt: "src", target_new: "alt", target_true: "answers", paraphrases: "rephrase", locality: ["loc", "loc_ans"] };

/// EasyEdit's flat record: `prompt` is the whole prompt with the subject written in,
/// `ground_truth` the true answer, `rephrase_prompt` the paraphrases, `locality_prompt` and
/// `locality_ground_truth` the locality pairs (each a string or a list).
const EASYEDIT: FlatKeys = FlatKeys { prompt: "prompt", target_new: "target_new", target_true: "ground_truth", paraphrases: "rephrase_prompt", locality: ["locality_prompt", "locality_ground_truth"] };

fn parse_flat(v: &Value, file: &str, index: usize, keys: &FlatKeys, skipped: &mut usize) -> Result<EditRequest> {
    // KnowEdit nests locality and portability in dictionaries; anything else under those keys
    // is refused, not dropped, so that no score is reported on prompts that were not read.
    for field in ["locality", "portability"] {
        if v.get(field).is_some_and(|x| !x.is_object() && !x.is_null()) {
            return Err(field_err(file, index, field, "expected KnowEdit's dictionary of [{\"prompt\", \"ground_truth\"}] lists per category"));
        }
    }
    let need = |field: &str| -> Result<String> { string(v, file, index, field)?.ok_or_else(|| field_err(file, index, field, "missing")) };
    let subject = need("subject")?;
    let prompt = template(&need(keys.prompt)?, &subject, file, index, keys.prompt)?;
    let new = need(keys.target_new)?;
    if new.trim().is_empty() {
        return Err(field_err(file, index, keys.target_new, "is empty"));
    }
    let target_new = with_space(&new);
    let target_true = match v.get(keys.target_true) {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(t) => Some(first_answer(t).ok_or_else(|| field_err(file, index, keys.target_true, "expected a string or a list whose first entry is one"))?),
    }
    .map(with_space)
    .filter(|t| *t != target_new);
    let mut locality = locality(v, file, index, keys.locality[0], keys.locality[1])?;
    locality.extend(nested_pairs(v, file, index, "locality", skipped)?);
    Ok(EditRequest {
        case_id: v.get("case_id").and_then(Value::as_u64),
        prompt,
        subject,
        target_new,
        target_true,
        // KnowEdit's recent set names its paraphrase `rephrase` in some records, as zsRE does.
        paraphrase_prompts: one_or_many(v, file, index, if v.get(keys.paraphrases).is_none() && v.get("rephrase").is_some() { "rephrase" } else { keys.paraphrases })?,
        neighborhood_prompts: vec![],
        generation_prompts: vec![],
        relation_id: None,
        locality,
        portability: nested_pairs(v, file, index, "portability", skipped)?,
    })
}

/// zsRE's keys or EasyEdit's (and KnowEdit's), where the record is in one of those layouts.
fn flat_layout(v: &Value) -> Option<&'static FlatKeys> {
    if v.get("src").is_some() && v.get("alt").is_some() {
        return Some(&ZSRE);
    }
    let nested = |k: &str| v.get(k).is_some_and(Value::is_object);
    let easyedit = v.get("requested_rewrite").is_none() && (["ground_truth", "rephrase_prompt", "rephrase", "locality_prompt"].iter().any(|k| v.get(*k).is_some()) || nested("locality") || nested("portability"));
    easyedit.then_some(&EASYEDIT)
}

/// One record; `skipped` counts KnowEdit pairs with a blank answer left out.
fn parse_record(v: &Value, file: &str, index: usize, skipped: &mut usize) -> Result<EditRequest> {
    if !v.is_object() {
        return Err(field_err(file, index, "(record)", "expected a JSON object"));
    }
    if v.get("concept").is_some() && v.get("labels").is_some() {
        return Err(field_err(file, index, "concept", "a WikiBio record (a passage to continue) is not a fact to edit; only KnowEdit's ZsRE, WikiData counterfact and recent sets are read"));
    }
    match flat_layout(v) {
        Some(keys) => return parse_flat(v, file, index, keys, skipped),
        None if v.get("requested_rewrite").is_some_and(Value::is_array) => {
            return Err(field_err(file, index, "requested_rewrite", "a list of rewrites (MQuAKE's multi-hop layout) is not read: one rewrite per record, as CounterFact writes it"));
        }
        None => {}
    }
    // CounterFact keeps the rewrite itself in "requested_rewrite".
    let rw = v.get("requested_rewrite").unwrap_or(v);
    let need = |field: &str| -> Result<String> {
        string(rw, file, index, field)?.ok_or_else(|| field_err(file, index, field, "missing"))
    };
    let subject = need("subject")?;
    let prompt = need("prompt")?;
    let target_new = with_space(&need("target_new")?);
    let target_true = string(rw, file, index, "target_true")?.map(|s| with_space(&s));
    if subject.trim().is_empty() {
        return Err(field_err(file, index, "subject", "is empty"));
    }
    if prompt.matches("{}").count() != 1 {
        return Err(field_err(file, index, "prompt", format!("{prompt:?} must contain exactly one {{}} for the subject")));
    }
    if target_new.trim().is_empty() {
        return Err(field_err(file, index, "target_new", "is empty"));
    }
    if target_true.as_deref() == Some(target_new.as_str()) {
        return Err(field_err(file, index, "target_new", "equals target_true: nothing to edit"));
    }
    let case_id = v.get("case_id").and_then(Value::as_u64);
    Ok(EditRequest {
        case_id,
        subject,
        prompt,
        target_new,
        target_true,
        paraphrase_prompts: strings(v, file, index, "paraphrase_prompts")?,
        neighborhood_prompts: strings(v, file, index, "neighborhood_prompts")?,
        generation_prompts: strings(v, file, index, "generation_prompts")?,
        relation_id: string(rw, file, index, "relation_id")?,
        locality: own_pairs(v, file, index, "locality")?,
        portability: own_pairs(v, file, index, "portability")?,
    })
}

/// Parses a JSON array of records (or a single record); `file` names the source in errors.
pub fn parse_requests(text: &str, file: &str) -> Result<Vec<EditRequest>> {
    parse_requests_with(text, file, false)
}

/// [`parse_requests`]; with `skip_bad`, records that are not well-formed are left out with a
/// warning that counts them and names the first few and why, instead of refusing the file (a
/// large third-party file with a few odd records stays usable). A file with no good record is
/// still an error.
pub fn parse_requests_with(text: &str, file: &str, skip_bad: bool) -> Result<Vec<EditRequest>> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Model { file: file.into(), detail: format!("not valid JSON: {e}") })?;
    match v {
        Value::Array(records) => {
            // EasyEdit drops zsRE and KnowEdit records without a new answer (MEND's zsRE files
            // and KnowEdit's recent set hold some); so does this, saying which, rather than
            // refusing the whole file.
            let no_answer = |r: &Value| flat_layout(r).is_some_and(|k| r.get(k.target_new).and_then(Value::as_str).is_some_and(|a| a.trim().is_empty()));
            let skipped: Vec<usize> = records.iter().enumerate().filter(|(_, r)| no_answer(r)).map(|(i, _)| i).collect();
            if !skipped.is_empty() {
                let shown: Vec<String> = skipped.iter().take(10).map(usize::to_string).collect();
                let more = if skipped.len() > 10 { ", …" } else { "" };
                log::warn!("{file}: {} records with an empty new answer ('alt' or 'target_new') skipped, as EasyEdit does (records {}{more})", skipped.len(), shown.join(", "));
            }
            let mut blank = 0;
            let parsed = records.iter().enumerate().filter(|(_, r)| !no_answer(r)).map(|(i, r)| parse_record(r, file, i, &mut blank));
            let out = if skip_bad {
                let (good, bad): (Vec<_>, Vec<_>) = parsed.partition(Result::is_ok);
                let bad: Vec<Error> = bad.into_iter().filter_map(Result::err).collect();
                if !bad.is_empty() {
                    let shown: Vec<String> = bad.iter().take(5).map(|e| e.to_string()).collect();
                    let more = if bad.len() > 5 { "; …" } else { "" };
                    log::warn!("{file}: {} of {} records left out (--skip-bad): {}{more}", bad.len(), records.len(), shown.join("; "));
                }
                if good.is_empty() {
                    return Err(Error::Model { file: file.into(), detail: format!("none of its {} records is a well-formed edit request", records.len()) });
                }
                good.into_iter().collect::<Result<Vec<_>>>()?
            } else {
                parsed.collect::<Result<Vec<_>>>()?
            };
            warn_blank(file, blank);
            Ok(out)
        }
        obj @ Value::Object(_) => {
            let mut blank = 0;
            let one = parse_record(&obj, file, 0, &mut blank)?;
            warn_blank(file, blank);
            Ok(vec![one])
        }
        _ => Err(Error::Model { file: file.into(), detail: "expected a list of edit records".into() }),
    }
}

fn warn_blank(file: &str, blank: usize) {
    if blank > 0 {
        log::warn!("{file}: {blank} KnowEdit locality or portability pairs with a blank answer skipped, as EasyEdit does");
    }
}

pub fn load_requests(path: &Path) -> Result<Vec<EditRequest>> {
    load_requests_with(path, false)
}

/// [`load_requests`], leaving out bad records with `skip_bad` ([`parse_requests_with`]).
pub fn load_requests_with(path: &Path, skip_bad: bool) -> Result<Vec<EditRequest>> {
    let file = path.display().to_string();
    let text = crate::store::read_text(path)?;
    parse_requests_with(&text, &file, skip_bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One odd record refuses the file, naming it; with skip_bad the others are read, and a
    /// file of bad records only is still refused.
    #[test]
    fn bad_records_refuse_the_file_unless_skipped() {
        let good = |s: &str| format!(r#"{{"subject": "{s}", "prompt": "{{}} is in", "target_new": "Rome", "target_true": "Paris"}}"#);
        let text = format!("[{}, {}, {}]", good("Louvre"), r#"{"subject": "Eiffel Tower", "prompt": "It is in", "target_new": "Rome"}"#, good("Orsay"));
        let e = parse_requests(&text, "odd.json").unwrap_err().to_string();
        assert!(e.contains("odd.json") && e.contains("record 1") && e.contains("exactly one {}"), "{e}");
        let kept = parse_requests_with(&text, "odd.json", true).unwrap();
        assert_eq!(kept.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(), ["Louvre", "Orsay"]);
        let bad = r#"[{"subject": "A", "prompt": "no slot", "target_new": "B"}]"#;
        let e = parse_requests_with(bad, "bad.json", true).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("none of its 1 records"), "{e}");
    }

    #[test]
    fn reads_both_layouts() {
        let ours = r#"[{"subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is",
            "target_new": " English", "target_true": "French", "paraphrase_prompts": ["p"]}]"#;
        let r = &parse_requests(ours, "ours.json").unwrap()[0];
        assert_eq!(r.full_prompt(), "The mother tongue of Danielle Darrieux is");
        assert_eq!(r.target_true.as_deref(), Some(" French"));
        let cf = r#"[{"case_id": 0, "pararel_idx": 2796, "requested_rewrite": {"prompt": "The mother tongue of {} is",
            "relation_id": "P103", "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
            "paraphrase_prompts": ["a", "b"], "neighborhood_prompts": ["c"], "attribute_prompts": [],
            "generation_prompts": ["d"]}]"#;
        let c = &parse_requests(cf, "cf.json").unwrap()[0];
        assert_eq!((c.case_id, c.target_new.as_str(), c.paraphrase_prompts.len()), (Some(0), " English", 2));
        assert_eq!((c.relation_id.as_deref(), r.relation_id.as_deref()), (Some("P103"), None));
        assert_eq!(c.subject, r.subject);
    }

    #[test]
    fn reads_zsre_records() {
        let z = r#"[{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "pred": "Trinity College",
            "rephrase": "What university did Watts Humphrey take part in?", "alt": "University of Michigan",
            "answers": ["Illinois Institute of Technology"], "loc": "nq question: who played desmond doss father in hacksaw ridge",
            "loc_ans": "Hugo Weaving", "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?"}]"#;
        let r = &parse_requests(z, "zsre.json").unwrap()[0];
        assert_eq!(r.full_prompt(), "What university did Watts Humphrey attend?");
        assert_eq!(r.prompt, "What university did {} attend?");
        assert_eq!((r.target_new.as_str(), r.target_true.as_deref()), (" University of Michigan", Some(" Illinois Institute of Technology")));
        assert_eq!(r.paraphrase_prompts, vec!["What university did Watts Humphrey take part in?".to_string()]);
        assert_eq!(r.locality, vec![PromptAnswer::new("nq question: who played desmond doss father in hacksaw ridge", " Hugo Weaving")]);
        let bad = r#"[{"subject": "Nobody", "src": "What university did Watts Humphrey attend?", "alt": "X"}]"#;
        let e = parse_requests(bad, "zsre.json").unwrap_err().to_string();
        assert!(e.contains("zsre.json") && e.contains("record 0") && e.contains("'src'"), "{e}");
        // Records without a new answer are skipped (EasyEdit does the same); the others keep
        // their record numbers in errors.
        let mixed = r#"[{"subject": "A", "src": "Where is A?", "alt": ""}, {"subject": "B", "src": "Where is B?", "alt": "C", "loc": "q", "loc_ans": "a"},
            {"subject": "D", "src": "Where is D?", "alt": "E", "loc": "q"}]"#;
        let e = parse_requests(mixed, "zsre.json").unwrap_err().to_string();
        assert!(e.contains("record 2") && e.contains("'loc_ans'"), "{e}");
        let two = parse_requests(&mixed.replace(r#", "loc": "q"}]"#, "}]"), "zsre.json").unwrap();
        assert_eq!(two.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(), ["B", "D"]);
        assert!(parse_requests(r#"{"subject": "A", "src": "Where is A?", "alt": " "}"#, "zsre.json").unwrap_err().to_string().contains("'alt'"));
    }

    #[test]
    fn reads_easyedit_records() {
        let e = r#"[{"case_id": 3, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux", "target_new": "English",
            "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux was born speaking",
            "locality_prompt": ["The mother tongue of Léon Blum is", "Paris is in"], "locality_ground_truth": ["French", "France"]}]"#;
        let r = &parse_requests(e, "easyedit.json").unwrap()[0];
        assert_eq!((r.prompt.as_str(), r.case_id), ("The mother tongue of {} is", Some(3)));
        assert_eq!((r.target_new.as_str(), r.target_true.as_deref()), (" English", Some(" French")));
        assert_eq!(r.paraphrase_prompts, ["Danielle Darrieux was born speaking"]);
        assert_eq!(r.locality.iter().map(|l| (l.prompt.as_str(), l.answer.as_str())).collect::<Vec<_>>(), [("The mother tongue of Léon Blum is", " French"), ("Paris is in", " France")]);
        for (text, want) in [
            (e.replace(r#", "France"]"#, "]"), "1 answers for 2 prompts"),
            (e.replace("of Danielle Darrieux is", "of her is"), "does not contain the subject"),
            (e.replace(r#""French", "France""#, r#""French", " ""#), "'locality_ground_truth': the answer of prompt 1 is empty"),
            (e.replace(r#""Paris is in""#, r#"" ""#), "'locality_prompt': prompt 1 is empty"),
            (e.replace(r#""rephrase_prompt": "Danielle Darrieux was born speaking""#, r#""rephrase_prompt": 3"#), "'rephrase_prompt': expected a string or a list of strings"),
            (e.replace(r#""case_id": 3,"#, r#""case_id": 3, "locality": [{"prompt": "a", "ground_truth": "b"}],"#), "'locality': expected KnowEdit's dictionary"),
        ] {
            let err = parse_requests(&text, "easyedit.json").unwrap_err().to_string();
            assert!(err.contains("easyedit.json") && err.contains("record 0") && err.contains(want), "{err}");
        }
        // This program's layout carries locality pairs too.
        let ours = r#"[{"subject": "S", "prompt": "{} is", "target_new": "a", "locality": [{"prompt": "T is", "answer": "b"}]}]"#;
        assert_eq!(parse_requests(ours, "o.json").unwrap()[0].locality, vec![PromptAnswer::new("T is", " b")]);
        let err = parse_requests(&ours.replace(r#""answer": "b""#, r#""answer": 2"#), "o.json").unwrap_err().to_string();
        assert!(err.contains("'locality'"), "{err}");
    }

    /// Shapes found in the files EasyEdit ships and reads: the zsRE portability file's one
    /// question per record, KnowEdit recent's `rephrase` and its records without a new answer,
    /// this program's own request file read back with its categories; MQuAKE's list of
    /// rewrites is refused by name.
    #[test]
    fn reads_the_variants_of_real_files() {
        let z = r#"[{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "rephrase": "r",
            "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"], "loc": "nq question: q", "loc_ans": "a",
            "portability": {"Recalled Relation": "(University of Michigan, located in, Ann Arbor)",
            "New Question": "In which city did Watts Humphrey go to university?", "New Answer": "Ann Arbor"}}]"#;
        let r = &parse_requests(z, "zsre_portability.json").unwrap()[0];
        assert_eq!(r.portability, vec![PromptAnswer { category: Some("one_hop".into()), ..PromptAnswer::new("In which city did Watts Humphrey go to university?", " Ann Arbor") }]);
        let err = parse_requests(&z.replace(r#""New Answer": "Ann Arbor""#, r#""New Answer": 3"#), "zsre_portability.json").unwrap_err().to_string();
        assert!(err.contains("'portability.New Answer'"), "{err}");
        let recent = r#"[{"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
            "rephrase": "Leo Arons died in", "portability": {"Logical_Generalization": [{"prompt": "Is Leo Arons still alive?", "ground_truth": [["no"]]}]}},
            {"subject": "A", "prompt": "A is in", "target_new": "", "rephrase": "A lies in"}]"#;
        let got = parse_requests(recent, "recent.json").unwrap();
        assert_eq!(got.len(), 1, "the record without a new answer is skipped");
        assert_eq!(got[0].paraphrase_prompts, ["Leo Arons died in"]);
        // Written by this program and read back: the same requests, categories included.
        let mut ours = got[0].clone();
        ours.locality = vec![PromptAnswer { category: Some("Forgetfulness".into()), ..PromptAnswer::new("T is", " b") }];
        let text = serde_json::to_string(&vec![ours.clone()]).unwrap();
        assert_eq!(parse_requests(&text, "requests.json").unwrap(), vec![ours]);
        let mquake = r#"[{"case_id": 1, "requested_rewrite": [{"prompt": "{} is a citizen of", "subject": "Ann", "target_new": {"str": "Italy"}, "target_true": {"str": "France"}}]}]"#;
        let err = parse_requests(mquake, "mquake.json").unwrap_err().to_string();
        assert!(err.contains("'requested_rewrite'") && err.contains("MQuAKE"), "{err}");
    }

    #[test]
    fn reads_knowedit_records() {
        // WikiData counterfact (answers as strings), ZsRE (lists) and recent (alias lists, no
        // ground truth), as KnowEdit's files write them.
        let k = r#"[{"subject": "Frederic Piesch", "prompt": "The name of the position held by Frederic Piesch is",
            "target_new": "Archbishop of León, Mexico", "ground_truth": "mayor of Vienna",
            "portability": {"Subject_Aliasing": [{"prompt": "The name of the position held by Frederic of Pieschen is", "ground_truth": "Archbishop of León, Mexico"}]},
            "locality": {"Relation_Specificity": [{"prompt": "The gender of Frederic Piesch is", "ground_truth": "male"}],
                         "Forgetfulness": [{"prompt": "The name of the position held by Frederic Piesch, which is not Archbishop of León, Mexico, is", "ground_truth": "mayor of Vienna"}]}},
          {"subject": "Epaspidoceras", "target_new": "Noctuidae", "prompt": "Which family does Epaspidoceras belong to?",
            "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
            "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]}, {"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]}]},
            "portability": {"Reasoning": [{"prompt": "What is the common name for the family Epaspidoceras belongs to?", "ground_truth": "Owlet moths"}]}},
          {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
            "portability": {"Logical_Generalization": [{"prompt": "Is Leo Arons still alive?", "ground_truth": [["no"], ["incorrect"]]}],
                            "Reasoning": [{"prompt": "The name of the continent which the place of death of Leo Arons is part of is", "ground_truth": [["Europe", "European continent"]]}]},
            "locality": {"Relation_Specificity": [{"prompt": "The name of the father of Leo Arons is", "ground_truth": [["Albert Arons"]]}]}}]"#;
        let r = parse_requests(k, "knowedit.json").unwrap();
        let pairs = |p: &[PromptAnswer]| p.iter().map(|l| l.answer.clone()).collect::<Vec<_>>();
        assert_eq!((r[0].prompt.as_str(), r[0].target_true.as_deref()), ("The name of the position held by {} is", Some(" mayor of Vienna")));
        // Categories in name order: Forgetfulness before Relation_Specificity.
        assert_eq!(pairs(&r[0].locality), [" mayor of Vienna", " male"]);
        assert_eq!(pairs(&r[0].portability), [" Archbishop of León, Mexico"]);
        assert_eq!((r[1].target_true.as_deref(), r[1].paraphrase_prompts.len()), (Some(" Aspidoceratidae"), 1));
        assert_eq!((pairs(&r[1].locality), pairs(&r[1].portability)), (vec![" genus".to_string(), " genus".into()], vec![" Owlet moths".to_string()]));
        assert_eq!(r[2].target_true, None);
        assert_eq!(pairs(&r[2].portability), [" no", " Europe"]);
        assert_eq!(r[2].portability[1].prompt, "The name of the continent which the place of death of Leo Arons is part of is");
        assert_eq!(pairs(&r[2].locality), [" Albert Arons"]);
        let categories = |p: &[PromptAnswer]| p.iter().map(|l| l.category.clone().unwrap_or_default()).collect::<Vec<_>>();
        assert_eq!(categories(&r[2].portability), ["Logical_Generalization", "Reasoning"]);
        assert_eq!(categories(&r[0].locality), ["Forgetfulness", "Relation_Specificity"]);
        // What published files hold besides: a blank answer (the pair is skipped, as EasyEdit
        // skips it), a null category, a prompt given as a list, an empty ground truth.
        let odd = k
            .replace(r#""ground_truth": [["Albert Arons"]]"#, r#""ground_truth": [[" "]]"#)
            .replace(r#""ground_truth": [["Europe", "European continent"]]"#, r#""ground_truth": [[]]"#)
            .replace(r#""Subject_Aliasing": [{"prompt": "The name of the position held by Frederic of Pieschen is""#, r#""Subject_Aliasing": [{"prompt": ["The name of the position held by Frederic of Pieschen is"]"#)
            .replace(r#""ground_truth": ["Aspidoceratidae"]"#, r#""ground_truth": []"#)
            .replace(r#""Forgetfulness": [{"prompt": "The name of the position held by Frederic Piesch, which is not Archbishop of León, Mexico, is", "ground_truth": "mayor of Vienna"}]"#, r#""Forgetfulness": null"#);
        let o = parse_requests(&odd, "knowedit.json").unwrap();
        assert!(o[2].locality.is_empty() && o[1].target_true.is_none(), "{o:?}");
        assert_eq!(o[0].portability[0].prompt, "The name of the position held by Frederic of Pieschen is");
        assert_eq!(pairs(&o[0].locality), [" male"]);
        assert_eq!(pairs(&o[2].portability), [" no"]);
        for (text, want) in [
            (k.replace(r#""ground_truth": "male""#, r#""ground_truth": 3"#), "'locality.Relation_Specificity[0]': no 'ground_truth'"),
            (k.replace(r#""prompt": "The name of the father of Leo Arons is""#, r#""prompt": " ""#), "'locality.Relation_Specificity': prompt 0 is empty"),
            (k.replace(r#"{"prompt": "Is Leo Arons still alive?", "#, r#"{"#), "'portability.Logical_Generalization[0]': no 'prompt'"),
            (k.replace(r#""Reasoning": [{"prompt": "What"#, r#""Reasoning": {"x": [{"prompt": "What"#).replace(r#""Owlet moths"}]}}"#, r#""Owlet moths"}]}}}"#), "'portability.Reasoning': expected a list"),
        ] {
            let err = parse_requests(&text, "knowedit.json").unwrap_err().to_string();
            assert!(err.contains("knowedit.json") && err.contains(want), "{want}: {err}");
        }
        let wikibio = r#"[{"text": "This is a Wikipedia passage about john russell reynolds.", "labels": "He received", "concept": "john russell reynolds",
            "locality": {"Relation_Specificity": [{"prompt": "The field of work of john russell reynolds is", "ground_truth": ["medicine"]}]}}]"#;
        assert!(parse_requests(wikibio, "wikibio.json").unwrap_err().to_string().contains("WikiBio"));
    }

    #[test]
    fn the_shipped_geography_set_loads_and_has_the_counterfact_shape() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/facts/geo/edits.json.gz");
        let records = load_requests(&path).unwrap();
        assert!(records.len() >= 10_000, "{} records", records.len());
        let mut subjects = std::collections::HashSet::new();
        let mut relations = std::collections::HashSet::new();
        for r in &records {
            assert!(r.paraphrase_prompts.len() >= 2 && r.neighborhood_prompts.len() >= 5, "{r:?}");
            assert!(r.paraphrase_prompts.iter().all(|p| p.contains(&r.subject)), "{r:?}");
            assert!(r.neighborhood_prompts.iter().all(|p| !p.contains(&r.subject)), "{r:?}");
            assert!(r.target_true.is_some() && !r.generation_prompts.is_empty() && r.relation_id.is_some());
            relations.insert(r.prompt.clone());
            assert!(subjects.insert((r.prompt.clone(), r.subject.clone())), "{} edited twice in one relation", r.subject);
        }
        assert!(relations.len() >= 5, "{relations:?}");
        // A damaged gzip is refused with the file's name, not read as garbage.
        let bytes = std::fs::read(&path).unwrap();
        let bad = std::env::temp_dir().join(format!("revive-truncated-{}.json.gz", std::process::id()));
        std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_requests(&bad).unwrap_err().to_string();
        std::fs::remove_file(&bad).ok();
        assert!(e.contains("revive-truncated") && e.contains("gzip"), "{e}");
    }

    #[test]
    fn bad_records_name_the_file_record_and_field() {
        let cases = [
            ("{", "not valid JSON"),
            ("[1]", "record 0"),
            (r#"[{"prompt": "x {} y", "target_new": "a"}]"#, "'subject': missing"),
            (r#"[{"subject": "S", "prompt": "no slot", "target_new": "a"}]"#, "'prompt'"),
            (r#"[{"subject": "S", "prompt": "{} {}", "target_new": "a"}]"#, "exactly one"),
            (r#"[{"subject": "S", "prompt": "{} is", "target_new": " a", "target_true": "a"}]"#, "equals target_true"),
            (r#"[{"subject": "S", "prompt": "{} is", "target_new": "a", "paraphrase_prompts": "p"}]"#, "'paraphrase_prompts'"),
            (r#"[{"subject": "S", "prompt": "{} is", "target_new": 3}]"#, "'target_new'"),
        ];
        for (text, want) in cases {
            let e = parse_requests(text, "edits.json").unwrap_err().to_string();
            assert!(e.contains("edits.json") && e.contains(want), "{text}: {e}");
        }
    }
}
