//! Evaluation: CounterFact metrics of edits (more to come: fluency, perplexity, spectra).

pub mod counterfact;
pub mod retention;
pub mod plot;
