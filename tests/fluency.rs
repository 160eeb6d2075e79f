//! Fluency against the code CounterFact's numbers come from: on SmolLM2's own generations,
//! revive's words equal nltk's `word_tokenize` and its n-gram entropy equals ROME's
//! `compute_n_gram_entropy`, as `benches/baselines/fluency_words.py` recorded them
//! (`tests/data/fluency-nltk.json`: nltk 3.10 with an untrained Punkt sentence splitter).

use revive::eval::general::ngram_entropy;
use revive::eval::word_tokenize::word_tokenize;
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    text: String,
    words: Vec<String>,
    entropy: f64,
}

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<Row>,
}

#[test]
fn words_and_entropy_equal_nltk_and_rome_on_real_generations() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fluency-nltk.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON");
    assert!(fixture.texts.len() >= 40, "{} texts", fixture.texts.len());
    let mut failures = vec![];
    for (i, row) in fixture.texts.iter().enumerate() {
        let ours = word_tokenize(&row.text);
        if ours != row.words {
            let at = ours.iter().zip(&row.words).position(|(a, b)| a != b).unwrap_or(ours.len().min(row.words.len()));
            failures.push(format!("text {i}: word {at}: revive {:?} vs nltk {:?}", ours.get(at..at + 4), row.words.get(at..at + 4)));
        }
        let h = ngram_entropy(&row.text);
        if !h.is_finite() || (h - row.entropy).abs() > 1e-9 {
            failures.push(format!("text {i}: entropy revive {h} vs ROME {}", row.entropy));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
