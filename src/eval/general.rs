//! General ability, measured the same way at every checkpoint of an experiment: perplexity on
//! held-out prose, agreement with the unedited model's next-token distributions, and fluency
//! (CounterFact's weighted bi/tri-gram entropy of generated text).

use crate::eval::word_tokenize::word_tokenize;
use crate::error::{Error, Result};
use crate::model::batch::PassBudget;
use crate::model::forward::GpuModel;
use crate::model::generate::{argmax, generate_many, log_softmax, score_many_within, Sampling};
use crate::model::Tok;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The held-out prose shipped with the program (`assets/corpus/heldout/`): the opening of
/// Austen's *Persuasion*, a text no edit and no C0 statistic ever reads.
pub const PROSE: &str = include_str!("../../assets/corpus/heldout/persuasion.txt");

/// Token windows of held-out prose: `perplexity` sequences first, then the `agreement` prompts
/// from the text after them (so the two measures never share tokens).
#[derive(Debug, Clone)]
pub struct ProseSet {
    pub perplexity: Vec<Vec<u32>>,
    pub agreement: Vec<Vec<u32>>,
    /// The tokens at the head of each perplexity sequence that are its context, not scored:
    /// the start tokens, at least one.
    pub unscored: usize,
}

/// Tokenizes `text` (the shipped prose when None) and cuts it into `ppl_tokens` tokens of
/// sequences of `seq_len`, then `n_prompts` prompts of `prompt_len` tokens.
pub fn prose_set(tok: &Tok, text: Option<&Path>, ppl_tokens: usize, seq_len: usize, n_prompts: usize, prompt_len: usize) -> Result<ProseSet> {
    let owned;
    let (text, name) = match text {
        Some(p) => {
            owned = crate::store::read_text(p)?;
            (owned.as_str(), p.display().to_string())
        }
        None => (PROSE, "assets/corpus/heldout/persuasion.txt".to_string()),
    };
    let mut ids = vec![];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        ids.extend(tok.encode(&format!("{line}\n"))?);
    }
    // Sequences and prompts begin as the model's do (a start token where it has one): the text
    // fills the rest of each.
    let start = tok.start().len();
    let seq_len = seq_len.max(start + 2);
    let prompt_len = prompt_len.max(start + 1);
    let n_seqs = ppl_tokens.div_ceil(seq_len);
    let need = n_seqs * (seq_len - start) + n_prompts * (prompt_len - start);
    if ids.len() < need {
        return Err(Error::Model { file: name, detail: format!("{} tokens; {need} needed ({n_seqs} sequences of {seq_len} and {n_prompts} prompts of {prompt_len})", ids.len()) });
    }
    let (ppl, rest) = ids.split_at(n_seqs * (seq_len - start));
    Ok(ProseSet {
        perplexity: ppl.chunks(seq_len - start).map(|c| tok.begin(c)).collect(),
        agreement: rest.chunks(prompt_len - start).take(n_prompts).map(|c| tok.begin(c)).collect(),
        unscored: start.max(1),
    })
}

/// exp of the mean NLL of every token after the first `unscored` (at least one) of each
/// sequence, scored in passes within `budget`.
pub fn perplexity(model: &GpuModel, seqs: &[Vec<u32>], unscored: usize, budget: PassBudget) -> Result<f64> {
    let (mut nll, mut n) = (0.0, 0usize);
    let unscored = unscored.max(1);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = seqs.iter().filter(|s| s.len() > unscored).map(|s| (s[..unscored].to_vec(), s[unscored..].to_vec())).collect();
    if !pairs.is_empty() {
        for lp in score_many_within(model, &pairs, budget)? {
            nll -= lp.iter().sum::<f64>();
            n += lp.len();
        }
    }
    if n == 0 {
        return Err(Error::shape("perplexity", "no tokens to score"));
    }
    let ppl = (nll / n as f64).exp();
    if !ppl.is_finite() {
        return Err(Error::Edit(format!("perplexity is not finite (mean NLL {})", nll / n as f64)));
    }
    Ok(ppl)
}

/// The next-token log-probabilities after each prompt.
pub fn next_token_logprobs(model: &GpuModel, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let logits = model.last_logits(prompts)?;
    Ok(logits.iter().map(|row| log_softmax(row).into_iter().map(|x| x as f32).collect()).collect())
}

/// How far the model's next-token distributions moved from the unedited model's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Mean over prompts of KL(unedited ‖ now), in nats.
    pub kl: f64,
    /// Share of prompts whose most likely next token is the unedited model's.
    pub top1: f64,
}

pub fn agreement(reference: &[Vec<f32>], now: &[Vec<f32>]) -> Result<Agreement> {
    if reference.len() != now.len() || reference.is_empty() {
        return Err(Error::shape("agreement", format!("{} reference rows against {}", reference.len(), now.len())));
    }
    let (mut kl, mut same) = (0.0, 0usize);
    for (p, q) in reference.iter().zip(now) {
        if p.len() != q.len() {
            return Err(Error::shape("agreement", format!("rows of {} and {} entries", p.len(), q.len())));
        }
        kl += p.iter().zip(q).map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64)).sum::<f64>();
        same += usize::from(argmax(p) == argmax(q));
    }
    let n = reference.len() as f64;
    let a = Agreement { kl: kl / n, top1: same as f64 / n };
    if !a.kl.is_finite() {
        return Err(Error::Edit("the KL divergence from the unedited model is not finite".into()));
    }
    Ok(a)
}

/// CounterFact's fluency of one text (ROME's `n_gram_entropy`): the entropy in bits of the
/// frequencies of its bigrams and trigrams of nltk's words (case kept, as there), weighted 2/3
/// and 4/3, averaged. Repetitive text scores low.
pub fn ngram_entropy(text: &str) -> f64 {
    let w = word_tokenize(text);
    let mut total = 0.0;
    for (n, weight) in [(2usize, 2.0 / 3.0), (3, 4.0 / 3.0)] {
        let mut counts: HashMap<&[String], usize> = HashMap::new();
        for g in w.windows(n) {
            *counts.entry(g).or_default() += 1;
        }
        // Summed in a fixed order: a hash map's order changes from run to run, and with it the
        // last bits of a checkpoint's fluency.
        let mut counts: Vec<usize> = counts.into_values().collect();
        counts.sort_unstable();
        let sum: usize = counts.iter().sum();
        let h: f64 = counts.iter().map(|&c| c as f64 / sum as f64).map(|p| -p * p.log2()).sum();
        total += weight * h;
    }
    total / 2.0
}

/// Mean n-gram entropy of `tokens`-token generations after each prompt, sampled as ROME's
/// evaluation samples (top-5), with a fixed seed per prompt so a checkpoint is reproducible;
/// the prompts decode together (`generate_many`).
pub fn fluency(model: &GpuModel, tok: &Tok, prompts: &[String], tokens: usize) -> Result<Option<f64>> {
    if prompts.is_empty() || tokens == 0 {
        return Ok(None);
    }
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode_prompt(p)).collect::<Result<_>>()?;
    let samplings: Vec<Sampling> = (0..prompts.len()).map(|i| Sampling { temperature: 1.0, top_k: 5, seed: 1000 + i as u64 }).collect();
    let mut sum = 0.0;
    for (p, out) in prompts.iter().zip(generate_many(model, &ids, tokens, &samplings, tok.eos())?) {
        sum += ngram_entropy(&format!("{p}{}", tok.decode(&out)?));
    }
    Ok(Some(sum / prompts.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a start token the perplexity sequences and agreement prompts begin with it and keep
    /// their lengths; the text is the same stream as without.
    #[test]
    fn prose_begins_with_the_start_token() {
        let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let dir = std::env::temp_dir().join(format!("revive-prose-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prose.txt");
        std::fs::write(&file, (0..100).map(|i| format!("w{} w{}\n", i % 30, (i * 11) % 30)).collect::<String>()).unwrap();
        let plain = prose_set(&Tok::word_level(&words).unwrap(), Some(&file), 20, 5, 3, 4).unwrap();
        let with = prose_set(&Tok::word_level(&words).unwrap().with_start(vec![0]).unwrap(), Some(&file), 20, 5, 3, 4).unwrap();
        assert_eq!(plain.perplexity.len(), 4);
        for set in [&with.perplexity, &with.agreement] {
            assert!(set.iter().all(|s| s[0] == 0), "{set:?}");
        }
        assert!(with.perplexity.iter().all(|s| s.len() == 5) && with.agreement.iter().all(|s| s.len() == 4));
        let text = |seqs: &[Vec<u32>], skip: usize| seqs.iter().flat_map(|s| s[skip..].to_vec()).collect::<Vec<_>>();
        assert_eq!(text(&with.perplexity, 1), text(&plain.perplexity, 0)[..text(&with.perplexity, 1).len()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn entropy_reference(tokens: &[&str], n: usize) -> f64 {
        // Independent count: every n-gram as a joined string.
        let mut seen: Vec<(String, usize)> = vec![];
        for g in tokens.windows(n) {
            let key = g.join("\u{1}");
            match seen.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => e.1 += 1,
                None => seen.push((key, 1)),
            }
        }
        let total = (tokens.len() + 1 - n) as f64;
        seen.iter().map(|(_, c)| *c as f64 / total).map(|p| -p * p.log2()).sum()
    }

    #[test]
    fn ngram_entropy_matches_counterfacts_formula_and_punishes_repetition() {
        let text = "The cat sat on the mat, and the cat slept.";
        let toks = ["The", "cat", "sat", "on", "the", "mat", ",", "and", "the", "cat", "slept", "."];
        assert_eq!(word_tokenize(text), toks);
        let want = (2.0 / 3.0 * entropy_reference(&toks, 2) + 4.0 / 3.0 * entropy_reference(&toks, 3)) / 2.0;
        assert!((ngram_entropy(text) - want).abs() < 1e-12);
        let repetitive = "Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris";
        assert!(ngram_entropy(repetitive) < 1e-12);
        assert!(ngram_entropy(text) > 2.0);
    }

    /// The same text gives the same bits every time (a checkpoint's fluency is compared
    /// across resumed runs): many n-grams of several counts, whose sum a hash map's order
    /// would change.
    #[test]
    fn ngram_entropy_is_the_same_bits_every_time() {
        let mut r = crate::testing::rng(3);
        let words = ["a", "b", "c", "d", "e", "f", "g"];
        let text: Vec<&str> = (0..400).map(|_| words[rand::Rng::random_range(&mut r, 0..words.len())]).collect();
        let text = text.join(" ");
        let first = ngram_entropy(&text).to_bits();
        assert!((0..200).all(|_| ngram_entropy(&text).to_bits() == first));
    }

    #[test]
    fn agreement_is_zero_kl_and_full_top1_against_itself_and_finite_kl_otherwise() {
        let lsm = |v: &[f32]| log_softmax(v).into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let a = vec![lsm(&[1.0, 2.0, 0.5]), lsm(&[0.0, 0.0, 3.0])];
        let same = agreement(&a, &a).unwrap();
        assert!(same.kl.abs() < 1e-7 && same.top1 == 1.0);
        let b = vec![lsm(&[2.5, 2.0, 0.5]), lsm(&[0.0, 0.0, 3.0])];
        let moved = agreement(&a, &b).unwrap();
        // KL(p‖q) for the first row, by hand in f64.
        let p: Vec<f64> = a[0].iter().map(|&x| (x as f64).exp()).collect();
        let kl0: f64 = (0..3).map(|i| p[i] * (a[0][i] as f64 - b[0][i] as f64)).sum();
        assert!((moved.kl - kl0 / 2.0).abs() < 1e-6 && moved.top1 == 0.5, "{moved:?}");
        assert!(agreement(&a, &b[..1]).is_err());
    }
}
