//! Evaluation: CounterFact metrics of edits, retention of known facts, general ability
//! (perplexity, agreement, fluency), spectral diagnostics of edited weights, the experiment's
//! checkpoints, plots.

pub mod counterfact;
pub mod experiment;
pub mod general;
pub mod retention;
pub mod word_tokenize;
pub mod plot;
pub mod spectrum;
pub mod trace;
