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
//! `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`) read as well.

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
    pub locality: Vec<LocalityPrompt>,
}

/// A prompt and the continuation read after it for EasyEdit's locality: the model's own
/// predictions along the answer, before and after an edit, should agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalityPrompt {
    pub prompt: String,
    pub answer: String,
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
fn locality(v: &Value, file: &str, index: usize, prompts: &str, answers: &str) -> Result<Vec<LocalityPrompt>> {
    let (p, a) = (one_or_many(v, file, index, prompts)?, one_or_many(v, file, index, answers)?);
    if p.len() != a.len() {
        return Err(field_err(file, index, answers, format!("{} answers for {} prompts in '{prompts}'", a.len(), p.len())));
    }
    p.into_iter().zip(a).enumerate().map(|(i, (prompt, answer))| locality_pair(prompt, &answer, file, index, [prompts, answers], i)).collect()
}

/// Locality pair `i`, its answer a continuation (with a leading space); neither may be empty.
/// `fields`: where the prompt and the answer came from, for errors.
fn locality_pair(prompt: String, answer: &str, file: &str, index: usize, fields: [&str; 2], i: usize) -> Result<LocalityPrompt> {
    if prompt.trim().is_empty() {
        return Err(field_err(file, index, fields[0], format!("locality prompt {i} is empty")));
    }
    if answer.trim().is_empty() {
        return Err(field_err(file, index, fields[1], format!("the answer of locality prompt {i} is empty")));
    }
    Ok(LocalityPrompt { prompt, answer: with_space(answer) })
}

/// This program's own layout: `locality: [{"prompt", "answer"}]`.
fn own_locality(v: &Value, file: &str, index: usize) -> Result<Vec<LocalityPrompt>> {
    let Some(list) = v.get("locality") else { return Ok(vec![]) };
    let pairs: Vec<LocalityPrompt> = serde_json::from_value(list.clone()).map_err(|e| field_err(file, index, "locality", format!("expected a list of {{\"prompt\", \"answer\"}}: {e}")))?;
    pairs.into_iter().enumerate().map(|(i, l)| locality_pair(l.prompt, &l.answer, file, index, ["locality", "locality"], i)).collect()
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

/// A zsRE record (MEND's layout, as ROME and EasyEdit read it): the question `src` holds the
/// subject, `alt` is the new answer, `answers[0]` the true one, `rephrase` a paraphrase, and
/// `loc` a question from Natural Questions with its answer `loc_ans` (locality).
const ZSRE: FlatKeys = FlatKeys { prompt: "src", target_new: "alt", target_true: "answers", paraphrases: "rephrase", locality: ["loc", "loc_ans"] };

/// EasyEdit's flat record: `prompt` is the whole prompt with the subject written in,
/// `ground_truth` the true answer, `rephrase_prompt` the paraphrases, `locality_prompt` and
/// `locality_ground_truth` the locality pairs (each a string or a list).
const EASYEDIT: FlatKeys = FlatKeys { prompt: "prompt", target_new: "target_new", target_true: "ground_truth", paraphrases: "rephrase_prompt", locality: ["locality_prompt", "locality_ground_truth"] };

fn parse_flat(v: &Value, file: &str, index: usize, keys: &FlatKeys) -> Result<EditRequest> {
    // KnowEdit nests its locality prompts in a dictionary this reader does not take: refused,
    // not dropped, so that locality is never reported on prompts it did not read.
    if v.get("locality").is_some() {
        return Err(field_err(file, index, "locality", format!("a nested locality dictionary (KnowEdit's layout) is not read; give the pairs as '{}' and '{}'", keys.locality[0], keys.locality[1])));
    }
    let need = |field: &str| -> Result<String> { string(v, file, index, field)?.ok_or_else(|| field_err(file, index, field, "missing")) };
    let subject = need("subject")?;
    let prompt = template(&need(keys.prompt)?, &subject, file, index, keys.prompt)?;
    let new = need(keys.target_new)?;
    if new.trim().is_empty() {
        return Err(field_err(file, index, keys.target_new, "is empty"));
    }
    let target_new = with_space(&new);
    let target_true = one_or_many(v, file, index, keys.target_true)?.into_iter().next().map(|s| with_space(&s)).filter(|t| *t != target_new);
    Ok(EditRequest {
        case_id: v.get("case_id").and_then(Value::as_u64),
        prompt,
        subject,
        target_new,
        target_true,
        paraphrase_prompts: one_or_many(v, file, index, keys.paraphrases)?,
        neighborhood_prompts: vec![],
        generation_prompts: vec![],
        relation_id: None,
        locality: locality(v, file, index, keys.locality[0], keys.locality[1])?,
    })
}

fn parse_record(v: &Value, file: &str, index: usize) -> Result<EditRequest> {
    if !v.is_object() {
        return Err(field_err(file, index, "(record)", "expected a JSON object"));
    }
    if v.get("src").is_some() && v.get("alt").is_some() {
        return parse_flat(v, file, index, &ZSRE);
    }
    if v.get("requested_rewrite").is_none() && ["ground_truth", "rephrase_prompt", "locality_prompt"].iter().any(|k| v.get(*k).is_some()) {
        return parse_flat(v, file, index, &EASYEDIT);
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
        locality: own_locality(v, file, index)?,
    })
}

/// Parses a JSON array of records (or a single record); `file` names the source in errors.
pub fn parse_requests(text: &str, file: &str) -> Result<Vec<EditRequest>> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Model { file: file.into(), detail: format!("not valid JSON: {e}") })?;
    match v {
        Value::Array(records) => {
            // EasyEdit drops zsRE records without a new answer (MEND's files hold some); so does
            // this, saying which, rather than refusing the whole file.
            let no_answer = |r: &Value| r.get("src").is_some() && r.get("alt").and_then(Value::as_str).is_some_and(|a| a.trim().is_empty());
            let skipped: Vec<usize> = records.iter().enumerate().filter(|(_, r)| no_answer(r)).map(|(i, _)| i).collect();
            if !skipped.is_empty() {
                let shown: Vec<String> = skipped.iter().take(10).map(usize::to_string).collect();
                let more = if skipped.len() > 10 { ", …" } else { "" };
                log::warn!("{file}: {} zsRE records with an empty 'alt' skipped, as EasyEdit does (records {}{more})", skipped.len(), shown.join(", "));
            }
            records.iter().enumerate().filter(|(_, r)| !no_answer(r)).map(|(i, r)| parse_record(r, file, i)).collect()
        }
        obj @ Value::Object(_) => Ok(vec![parse_record(&obj, file, 0)?]),
        _ => Err(Error::Model { file: file.into(), detail: "expected a list of edit records".into() }),
    }
}

pub fn load_requests(path: &Path) -> Result<Vec<EditRequest>> {
    let file = path.display().to_string();
    let text = crate::store::read_text(path)?;
    parse_requests(&text, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.locality, vec![LocalityPrompt { prompt: "nq question: who played desmond doss father in hacksaw ridge".into(), answer: " Hugo Weaving".into() }]);
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
            (e.replace(r#""French", "France""#, r#""French", " ""#), "'locality_ground_truth': the answer of locality prompt 1 is empty"),
            (e.replace(r#""Paris is in""#, r#"" ""#), "'locality_prompt': locality prompt 1 is empty"),
            (e.replace(r#""rephrase_prompt": "Danielle Darrieux was born speaking""#, r#""rephrase_prompt": 3"#), "'rephrase_prompt': expected a string or a list of strings"),
            (e.replace(r#""case_id": 3,"#, r#""case_id": 3, "locality": {"Relation_Specificity": []},"#), "KnowEdit"),
        ] {
            let err = parse_requests(&text, "easyedit.json").unwrap_err().to_string();
            assert!(err.contains("easyedit.json") && err.contains("record 0") && err.contains(want), "{err}");
        }
        // This program's layout carries locality pairs too.
        let ours = r#"[{"subject": "S", "prompt": "{} is", "target_new": "a", "locality": [{"prompt": "T is", "answer": "b"}]}]"#;
        assert_eq!(parse_requests(ours, "o.json").unwrap()[0].locality, vec![LocalityPrompt { prompt: "T is".into(), answer: " b".into() }]);
        let err = parse_requests(&ours.replace(r#""answer": "b""#, r#""answer": 2"#), "o.json").unwrap_err().to_string();
        assert!(err.contains("'locality'"), "{err}");
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
