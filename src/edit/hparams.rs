//! Hyper-parameters, one JSON file per method and model (as EasyEdit's hparams), so a run
//! names exactly what it used. Defaults ship in assets/hparams/<method>/<model>.json with the
//! reasoning for each value written next to it (the `why` object).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Context templates: "{}" plus `per_prefix` sampled continuations of each prefix, `length`
/// tokens long, each followed by ". {}" (ROME's recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    pub prefixes: Vec<String>,
    pub per_prefix: usize,
    pub length: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeHparams {
    /// The layer whose MLP down-projection is rewritten.
    pub layer: usize,
    /// Adam steps for the target δ.
    pub v_steps: usize,
    pub v_lr: f64,
    /// wd in wd·‖δ‖²/‖h‖².
    pub v_weight_decay: f64,
    /// ‖δ‖ ≤ clamp_norm_factor·‖h‖.
    pub clamp_norm_factor: f64,
    /// Weight of KL(p_orig ‖ p_δ) on "{subject} is a".
    pub kl_factor: f64,
    /// Stop once the mean NLL of the target is below this.
    pub nll_stop: f64,
    pub templates: Templates,
    /// Corpus tokens for the covariance C0.
    pub mom2_tokens: usize,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub why: BTreeMap<String, String>,
}

const SMOLLM2_ROME: &str = include_str!("../../assets/hparams/rome/smollm2.json");

impl RomeHparams {
    /// The shipped defaults for SmolLM2.
    pub fn smollm2() -> Self {
        Self::parse(SMOLLM2_ROME, "assets/hparams/rome/smollm2.json").expect("the shipped hparams parse")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Model { file: file.clone(), detail: format!("cannot read: {e}") })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let hp: RomeHparams = serde_json::from_str(text).map_err(|e| Error::Model { file: file.into(), detail: format!("bad ROME hparams: {e}") })?;
        hp.validate(file)?;
        Ok(hp)
    }

    fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Model { file: file.into(), detail: format!("field '{field}': {why}") });
        let positive = [
            ("v_lr", self.v_lr),
            ("clamp_norm_factor", self.clamp_norm_factor),
            ("nll_stop", self.nll_stop),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, "must be a positive number");
            }
        }
        for (name, v) in [("v_weight_decay", self.v_weight_decay), ("kl_factor", self.kl_factor)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, "must be a number ≥ 0");
            }
        }
        if self.v_steps == 0 {
            return bad("v_steps", "must be at least 1");
        }
        if self.mom2_tokens == 0 {
            return bad("mom2_tokens", "must be at least 1");
        }
        if self.templates.per_prefix > 0 && (self.templates.prefixes.is_empty() || self.templates.length == 0) {
            return bad("templates", "sampled templates need prefixes and a length > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_parse() {
        let hp = RomeHparams::smollm2();
        assert!(hp.layer < 30 && hp.v_steps > 0 && hp.why.contains_key("layer"));
    }

    #[test]
    fn bad_files_name_the_file_and_field() {
        let good = serde_json::to_value(RomeHparams::smollm2()).unwrap();
        let with = |field: &str, v: serde_json::Value| {
            let mut x = good.clone();
            x[field] = v;
            x.to_string()
        };
        let cases = [
            ("{".to_string(), "bad ROME hparams"),
            (with("v_lr", serde_json::json!(-1.0)), "'v_lr'"),
            (with("v_steps", serde_json::json!(0)), "'v_steps'"),
            (with("kl_factor", serde_json::json!(-0.5)), "'kl_factor'"),
            (with("mom2_tokens", serde_json::json!(0)), "'mom2_tokens'"),
            (with("layer", serde_json::json!("five")), "bad ROME hparams"),
            (with("surprise", serde_json::json!(1)), "unknown field"),
        ];
        for (text, want) in cases {
            let e = RomeHparams::parse(&text, "h.json").unwrap_err().to_string();
            assert!(e.contains("h.json") && e.contains(want), "{want}: {e}");
        }
    }
}
