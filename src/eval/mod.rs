//! Evaluation: CounterFact metrics of edits, retention of known facts, spectral diagnostics of
//! edited weights, plots.

pub mod counterfact;
pub mod retention;
pub mod plot;
pub mod spectrum;
