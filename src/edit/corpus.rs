//! The natural-text corpus behind the key statistics (C0): WordNet 3.0 glosses and example
//! sentences (assets/corpus, see its README), cut into fixed-length token sequences.
//!
//! Sequences are all the same length (the last may be shorter) and never padded, so no key of
//! a padding token reaches C0. The text is embedded in the binary so the corpus is the same
//! from any working directory and for an installed binary.

use crate::error::{Error, Result};
use crate::model::Tok;

/// One gloss per line, ~1.8 MB.
pub const WORDNET: &str = include_str!("../../assets/corpus/wordnet.txt");

/// Tokens per sequence: long enough that most keys see real context, short enough that the
/// attention cost per token stays small.
pub const SEQ_LEN: usize = 128;

/// The shuffle seed the cached statistics use.
pub const SEED: u64 = 0;

/// The corpus lines, in file order.
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// SplitMix64: a few lines that give the same stream on every platform and every version of
/// the `rand` crate, so a shuffle (and so a cache key) never changes under a dependency update.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Fisher–Yates with SplitMix64; `None` keeps the order.
pub fn shuffle<T>(items: &mut [T], seed: Option<u64>) {
    let Some(seed) = seed else { return };
    let mut r = SplitMix(seed);
    for i in (1..items.len()).rev() {
        let j = (r.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The token stream of `text`'s lines (shuffled by `seed`, each line ending in a newline), cut
/// into sequences of `seq_len` tokens, each beginning with the tokenizer's start tokens (counted
/// in its length), `max_tokens` tokens of text in all (fewer when the text runs out); only the
/// last sequence may be shorter. Lines are shuffled before tokenizing, not the
/// sequences after, so a small budget tokenizes only the lines it needs and still samples the
/// whole corpus (the file is in part-of-speech order).
pub fn sequences(tok: &Tok, text: &str, seq_len: usize, seed: Option<u64>, max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    if seq_len == 0 {
        return Err(Error::Edit("corpus: the sequence length must be positive".into()));
    }
    let mut lines = lines(text);
    shuffle(&mut lines, seed);
    // A hint only: max_tokens may be usize::MAX for "the whole corpus".
    let mut stream = Vec::with_capacity(max_tokens.min(text.len()).saturating_add(seq_len));
    for line in lines {
        if stream.len() >= max_tokens {
            break;
        }
        stream.extend(tok.encode(&format!("{line}\n"))?);
    }
    stream.truncate(max_tokens);
    // Each sequence begins as the model's sequences do (a start token where it has one), and
    // the start tokens count in its length.
    let body = seq_len.checked_sub(tok.start().len()).filter(|&b| b > 0).ok_or_else(|| Error::Edit(format!("corpus: sequences of {seq_len} tokens leave no room after the {} start tokens", tok.start().len())))?;
    Ok(stream.chunks(body).map(|c| tok.begin(c)).collect())
}

/// The WordNet corpus with the defaults the cached statistics use.
pub fn wordnet_sequences(tok: &Tok, max_tokens: usize, context: usize) -> Result<Vec<Vec<u32>>> {
    // A model with a context shorter than SEQ_LEN (a tiny test model) takes shorter sequences;
    // every real model's is longer, so its cached statistics stay keyed as they were.
    sequences(tok, WORDNET, SEQ_LEN.min(context), Some(SEED), max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_corpus_is_one_gloss_per_line() {
        let l = lines(WORDNET);
        assert_eq!(l.len(), WORDNET.lines().count(), "no empty lines");
        assert!(l.len() > 20_000, "{} lines", l.len());
        assert!(l.iter().all(|s| !s.contains('|') && s.trim() == *s), "a line keeps WordNet's pointer fields or blanks");
    }

    /// A model whose context is shorter than SEQ_LEN gets sequences that fit it (its C0 pass
    /// failed on the first sequence before); a longer context keeps SEQ_LEN.
    #[test]
    fn sequences_fit_a_short_context() {
        let tok = Tok::word_level(&["<unk>", "a", "the", "of"]).unwrap();
        for (context, want) in [(64, 64), (100_000, SEQ_LEN)] {
            let seqs = wordnet_sequences(&tok, 2000, context).unwrap();
            assert!(seqs.iter().all(|s| s.len() <= want) && seqs.iter().any(|s| s.len() == want), "context {context}");
        }
    }

    #[test]
    fn the_shuffle_is_a_fixed_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        shuffle(&mut a, Some(7));
        let mut b: Vec<u32> = (0..100).collect();
        shuffle(&mut b, Some(7));
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // Pinned: a change here changes every cache key of the corpus statistics.
        assert_eq!(SplitMix(0).next(), 0xE220_A839_7B1D_CDAF);
    }

    /// With a start token every sequence begins with it and keeps its length; the text between
    /// is the same stream, in the same order, as without.
    #[test]
    fn sequences_begin_with_the_start_token() {
        let words: Vec<String> = (0..50).map(|i| format!("w{i}")).collect();
        let text: String = (0..40).map(|i| format!("w{} w{}\n", i % 50, (i * 7) % 50)).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let plain = Tok::word_level(&words).unwrap();
        let with = Tok::word_level(&words).unwrap().with_start(vec![3]).unwrap();
        let a = sequences(&plain, &text, 7, Some(1), 60).unwrap();
        let b = sequences(&with, &text, 7, Some(1), 60).unwrap();
        assert!(b.iter().all(|s| s[0] == 3), "{b:?}");
        assert!(b[..b.len() - 1].iter().all(|s| s.len() == 7));
        let stream = |seqs: &[Vec<u32>], skip: usize| seqs.iter().flat_map(|s| s[skip..].to_vec()).collect::<Vec<_>>();
        assert_eq!(stream(&a, 0), stream(&b, 1));
        assert!(sequences(&with, &text, 1, Some(1), 60).unwrap_err().to_string().contains("no room"));
    }
}
