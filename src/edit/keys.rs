//! Context templates and the key k*: the down-projection input at the subject's last token,
//! averaged over "{}" and a few short prefixes the model writes itself (ROME's recipe), so the
//! edit answers to the subject in many contexts rather than to one exact string.

use super::hparams::Templates;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::forward::GpuModel;
use crate::model::generate::{sample_batch, Sampling};
use crate::model::Tok;
use crate::ops::gather::gather_rows;

/// "{}" plus `per_prefix` sampled continuations of each prefix, each ending in ". {}".
pub fn context_templates(model: &GpuModel, tok: &Tok, spec: &Templates) -> Result<Vec<String>> {
    let mut templates = vec!["{}".to_string()];
    if spec.per_prefix == 0 {
        return Ok(templates);
    }
    let mut prompts = vec![];
    for p in &spec.prefixes {
        let ids = tok.encode_prompt(p)?;
        if ids.len() == tok.start().len() {
            return Err(Error::Edit(format!("template prefix {p:?} has no tokens")));
        }
        prompts.extend(std::iter::repeat_n(ids, spec.per_prefix));
    }
    // ROME samples from the top 5 tokens; the seed makes the templates reproducible.
    let sampling = Sampling { temperature: 1.0, top_k: 5, seed: spec.seed };
    let tails = sample_batch(model, &prompts, spec.length, sampling)?;
    for (prompt, tail) in prompts.iter().zip(tails) {
        // The start tokens (and SentencePiece's dummy prefix) begin the sequence a template is
        // put into, not the template's text.
        let ids: Vec<u32> = prompt.iter().chain(&tail).copied().collect();
        // Braces would read as placeholders; ROME blanks them the same way.
        let text = tok.decode_prompt(&ids)?.replace(['{', '}'], " ");
        templates.push(format!("{}. {{}}", text.trim_end()));
    }
    Ok(templates)
}

/// A tokenized prompt and where the subject ends in it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectPrompt {
    pub ids: Vec<u32>,
    pub subject_last: usize,
}

/// `template` holds "{}" where the relation prompt goes; `prompt` holds "{}" where the subject
/// goes. The subject's last token is the last token of the text up to the subject's end.
pub fn subject_prompt(tok: &Tok, template: &str, prompt: &str, subject: &str) -> Result<SubjectPrompt> {
    if !prompt.contains("{}") {
        return Err(Error::Edit(format!("the prompt {prompt:?} has no '{{}}' for the subject")));
    }
    if subject.trim().is_empty() {
        return Err(Error::Edit("the subject is empty".into()));
    }
    let text = template.replacen("{}", prompt, 1);
    let at = text.find("{}").ok_or_else(|| Error::Edit(format!("the template {template:?} has no '{{}}'")))?;
    let prefix = format!("{}{subject}", &text[..at]);
    let full = format!("{prefix}{}", &text[at + 2..]);
    let ids = tok.encode_prompt(&full)?;
    let upto = tok.encode_prompt(&prefix)?.len();
    if upto <= tok.start().len() || upto > ids.len() {
        return Err(Error::Edit(format!("cannot locate the subject {subject:?} in the tokens of {full:?}")));
    }
    Ok(SubjectPrompt { ids, subject_last: upto - 1 })
}

impl SubjectPrompt {
    /// The tokens up to the subject's last: all that reaches its row under causal attention,
    /// so all a key or a residual at the subject needs (the relation's words after it are most
    /// of a short prompt).
    pub fn up_to_subject(&self) -> Vec<u32> {
        self.ids[..=self.subject_last].to_vec()
    }
}

/// The keys of `layer` at each prompt's subject token: one row of width ffn per prompt.
pub fn subject_keys(model: &GpuModel, prompts: &[SubjectPrompt], layer: usize) -> Result<Vec<Vec<f32>>> {
    let batch = Batch::new(&prompts.iter().map(SubjectPrompt::up_to_subject).collect::<Vec<_>>())?;
    let keys = model.layer_keys(&batch, layer)?;
    let rows: Vec<u32> = prompts.iter().enumerate().map(|(s, p)| batch.row(s, p.subject_last) as u32).collect();
    let got = model.gpu().download(&gather_rows(model.gpu(), &keys, &rows)?)?;
    let width = keys.shape()[1];
    Ok(got.chunks(width).map(<[f32]>::to_vec).collect())
}

/// k*: the mean of the subject keys over the templates.
pub fn mean_key(keys: &[Vec<f32>]) -> Vec<f32> {
    let n = keys.len() as f64;
    (0..keys[0].len()).map(|j| (keys.iter().map(|k| k[j] as f64).sum::<f64>() / n) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start token begins the prompt and moves the subject's last token by one.
    #[test]
    fn the_subject_is_found_after_a_start_token() {
        let words = ["?", "<s>", "Paris", "is", "in", "the", "city"];
        let plain = Tok::word_level(&words).unwrap();
        let with = Tok::word_level(&words).unwrap().with_start(vec![1]).unwrap();
        let a = subject_prompt(&plain, "{}", "the city {} is in", "Paris").unwrap();
        let b = subject_prompt(&with, "{}", "the city {} is in", "Paris").unwrap();
        assert_eq!(a.ids, vec![5, 6, 2, 3, 4]);
        assert_eq!(b.ids, vec![1, 5, 6, 2, 3, 4]);
        assert_eq!((a.subject_last, b.subject_last), (2, 3));
        assert_eq!(b.ids[b.subject_last], 2);
        assert_eq!(b.up_to_subject(), vec![1, 5, 6, 2]);
    }
}
