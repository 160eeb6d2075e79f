//! Hyper-parameters, one JSON file per method and model (as EasyEdit's hparams), so a run
//! names exactly what it used. Defaults ship in assets/hparams/<method>/<model>.json with the
//! reasoning for each value written next to it (the `why` object).

use super::target::TargetLoss;
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
    /// "rome" (optional in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
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
    /// Stop once the mean NLL of the target is below this (with `target_loss` "published",
    /// once the whole loss is).
    pub nll_stop: f64,
    /// "design" (default) or "published": the weight decay and early stop of the design or of
    /// ROME's, MEMIT's and EasyEdit's code (`edit::target::TargetLoss`).
    #[serde(default, skip_serializing_if = "is_design")]
    pub target_loss: TargetLoss,
    pub templates: Templates,
    /// Corpus tokens for the covariance C0.
    pub mom2_tokens: usize,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub why: BTreeMap<String, String>,
}

const SMOLLM2_ROME: &str = include_str!("../../assets/hparams/rome/smollm2.json");

/// Single values the command line puts over a hyper-parameter file: the reduced settings
/// (`--steps`, `--templates`, `--cov-tokens`), the edited layers and the target loss.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub steps: Option<usize>,
    pub templates: Option<usize>,
    pub cov_tokens: Option<usize>,
    pub layers: Option<Vec<usize>>,
    pub target_loss: Option<TargetLoss>,
}

impl Overrides {
    /// The overrides every method's hyper-parameters share (all but the layers).
    fn apply_shared(&self, steps: &mut usize, templates: &mut Templates, mom2_tokens: &mut usize, target_loss: &mut TargetLoss) {
        if let Some(s) = self.steps {
            *steps = s.max(1);
        }
        if let Some(t) = self.templates {
            templates.per_prefix = t;
        }
        if let Some(n) = self.cov_tokens {
            *mom2_tokens = n.max(1);
        }
        if let Some(t) = self.target_loss {
            *target_loss = t;
        }
    }
}

impl RomeHparams {
    /// The shipped defaults for SmolLM2.
    pub fn smollm2() -> Self {
        Self::parse(SMOLLM2_ROME, "assets/hparams/rome/smollm2.json").expect("the shipped hparams parse")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let (text, file) = read(path)?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let hp: RomeHparams = serde_json::from_str(text).map_err(|e| Error::Model { file: file.into(), detail: format!("bad ROME hparams: {e}") })?;
        hp.validate(file)?;
        Ok(hp)
    }

    /// The command line's overrides (ROME edits one layer: the first of `layers`).
    pub fn with_overrides(mut self, o: &Overrides) -> Self {
        if let Some(&l) = o.layers.as_ref().and_then(|l| l.first()) {
            self.layer = l;
        }
        o.apply_shared(&mut self.v_steps, &mut self.templates, &mut self.mom2_tokens, &mut self.target_loss);
        self
    }

    fn validate(&self, file: &str) -> Result<()> {
        if self.method.as_deref().is_some_and(|m| m != "rome") {
            return Err(field_error(file, "method", "ROME's hyper-parameters must say \"rome\""));
        }
        check_shared(file, &super::target::TargetParams::from(self), &self.templates, self.mom2_tokens)
    }
}

fn is_design(loss: &TargetLoss) -> bool {
    *loss == TargetLoss::Design
}

/// Refuses layers the model does not have, before anything is computed: the shipped
/// hyper-parameters are SmolLM2's (layers 3–7 of 30), and a smaller model given them would
/// otherwise fail deep inside the first forward pass.
pub fn check_layers(method: &str, layers: &[usize], n_layers: usize) -> Result<()> {
    match layers.iter().find(|&&l| l >= n_layers) {
        None => Ok(()),
        Some(l) => Err(Error::Edit(format!(
            "{method} edits layer {l} (of {layers:?}), but this model has {n_layers} layers (0–{}); the shipped hyper-parameters are SmolLM2's: choose this model's with --layers (ROME: --layer) or --hparams FILE",
            n_layers.saturating_sub(1)
        ))),
    }
}

fn field_error(file: &str, field: &str, why: &str) -> Error {
    Error::Model { file: file.into(), detail: format!("field '{field}': {why}") }
}

/// The file's text, or an error naming it.
fn read(path: &Path) -> Result<(String, String)> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Model { file: file.clone(), detail: format!("cannot read: {e}") })?;
    Ok((text, file))
}

/// The checks every method's file shares: the target optimisation, the templates, C0's tokens.
fn check_shared(file: &str, t: &super::target::TargetParams, templates: &Templates, mom2_tokens: usize) -> Result<()> {
    for (name, v) in [("v_lr", t.lr), ("clamp_norm_factor", t.clamp_norm_factor), ("nll_stop", t.nll_stop)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(field_error(file, name, "must be a positive number"));
        }
    }
    for (name, v) in [("v_weight_decay", t.weight_decay), ("kl_factor", t.kl_factor)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(field_error(file, name, "must be a number ≥ 0"));
        }
    }
    if t.steps == 0 {
        return Err(field_error(file, "v_steps", "must be at least 1"));
    }
    if mom2_tokens == 0 {
        return Err(field_error(file, "mom2_tokens", "must be at least 1"));
    }
    if templates.per_prefix > 0 && (templates.prefixes.is_empty() || templates.length == 0) {
        return Err(field_error(file, "templates", "sampled templates need prefixes and a length > 0"));
    }
    Ok(())
}

/// The batch methods, all built on MEMIT's multi-layer update (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchMethod {
    Memit,
    AlphaEdit,
    Rect,
    Prune,
    Nse,
}

impl BatchMethod {
    pub const ALL: [BatchMethod; 5] = [BatchMethod::Memit, BatchMethod::AlphaEdit, BatchMethod::Rect, BatchMethod::Prune, BatchMethod::Nse];

    pub fn name(&self) -> &'static str {
        match self {
            BatchMethod::Memit => "memit",
            BatchMethod::AlphaEdit => "alphaedit",
            BatchMethod::Rect => "rect",
            BatchMethod::Prune => "prune",
            BatchMethod::Nse => "nse",
        }
    }

    pub fn from_name(name: &str) -> Option<BatchMethod> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Hyper-parameters of MEMIT, AlphaEdit, RECT, PRUNE and NSE: the layer range, the target
/// optimisation (as ROME's) and each method's own values, which only that method may set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHparams {
    pub method: BatchMethod,
    /// Edited layers, ascending; the target is the residual stream after the last.
    pub layers: Vec<usize>,
    pub v_steps: usize,
    pub v_lr: f64,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    pub nll_stop: f64,
    /// As ROME's `target_loss`.
    #[serde(default, skip_serializing_if = "is_design")]
    pub target_loss: TargetLoss,
    pub templates: Templates,
    pub mom2_tokens: usize,
    /// λ in ΔW = R Kᵀ(λ C0 + K Kᵀ)⁻¹ (MEMIT, RECT, PRUNE, NSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mom2_update_weight: Option<f64>,
    /// AlphaEdit: C0's eigenvectors with eigenvalue below this fraction of the largest span
    /// the null space the update is projected into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullspace_threshold: Option<f64>,
    /// AlphaEdit's α (its "L2"): the ridge on the projected normal equations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// RECT: the fraction of ΔW's entries kept, the largest by |ΔW| / |W|.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_fraction: Option<f64>,
    /// NSE: a request takes part in a pass of the layer loop while its residual stream at the
    /// last edited layer is farther than this from its target (‖z* − z‖, absolute) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// … and nearer than this (NSE leaves out requests it cannot reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_bound: Option<f64>,
    /// NSE: measurements of the distances, each but the last followed by a pass of the layer
    /// loop (NSE's own count: 3 means at most two passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<usize>,
    /// NSE: the neurons (keys' components) a layer updates: the most active ones, by Σ|k| over
    /// the batch, whose share of that sum stays within this fraction; 1 takes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neuron_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub why: BTreeMap<String, String>,
}

const SMOLLM2_BATCH: [(&str, &str); 5] = [
    ("memit", include_str!("../../assets/hparams/memit/smollm2.json")),
    ("alphaedit", include_str!("../../assets/hparams/alphaedit/smollm2.json")),
    ("rect", include_str!("../../assets/hparams/rect/smollm2.json")),
    ("prune", include_str!("../../assets/hparams/prune/smollm2.json")),
    ("nse", include_str!("../../assets/hparams/nse/smollm2.json")),
];

impl BatchHparams {
    /// The shipped defaults for SmolLM2.
    pub fn smollm2(method: BatchMethod) -> Self {
        let (name, text) = SMOLLM2_BATCH.iter().find(|(n, _)| *n == method.name()).expect("every method ships hparams");
        Self::parse(text, &format!("assets/hparams/{name}/smollm2.json")).expect("the shipped hparams parse")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let (text, file) = read(path)?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let hp: BatchHparams = serde_json::from_str(text).map_err(|e| Error::Model { file: file.into(), detail: format!("bad hparams: {e}") })?;
        hp.validate(file)?;
        Ok(hp)
    }

    /// The target optimisation's knobs, at the last edited layer.
    pub fn target(&self) -> super::target::TargetParams {
        super::target::TargetParams {
            layer: *self.layers.last().expect("validated: at least one layer"),
            steps: self.v_steps,
            lr: self.v_lr,
            weight_decay: self.v_weight_decay,
            clamp_norm_factor: self.clamp_norm_factor,
            kl_factor: self.kl_factor,
            nll_stop: self.nll_stop,
            loss: self.target_loss,
        }
    }

    pub fn validate(&self, file: &str) -> Result<()> {
        let bad = |field: &str, why: String| Err(field_error(file, field, &why));
        if self.layers.is_empty() {
            return bad("layers", "name at least one layer".into());
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            return bad("layers", format!("{:?} must be strictly ascending", self.layers));
        }
        check_shared(file, &self.target(), &self.templates, self.mom2_tokens)?;
        use BatchMethod::*;
        let m = self.method;
        // (field, value, whether this method uses it, its valid range, the range in words)
        type Own<'a> = (&'a str, Option<f64>, bool, fn(f64) -> bool, &'a str);
        let own: [Own; 8] = [
            ("mom2_update_weight", self.mom2_update_weight, matches!(m, Memit | Rect | Prune | Nse), |v| v > 0.0, "a positive number"),
            ("nullspace_threshold", self.nullspace_threshold, m == AlphaEdit, |v| v > 0.0 && v < 1.0, "a fraction of C0's largest eigenvalue, in (0, 1)"),
            ("l2", self.l2, m == AlphaEdit, |v| v > 0.0, "a positive number"),
            ("keep_fraction", self.keep_fraction, m == Rect, |v| v > 0.0 && v <= 1.0, "a fraction in (0, 1]"),
            ("alpha", self.alpha, m == Nse, |v| v >= 0.0, "a distance ≥ 0"),
            ("upper_bound", self.upper_bound, m == Nse, |v| v > 0.0, "a positive distance"),
            ("max_iterations", self.max_iterations.map(|v| v as f64), m == Nse, |v| v >= 2.0, "at least 2 (the last iteration only measures)"),
            ("neuron_threshold", self.neuron_threshold, m == Nse, |v| v > 0.0 && v <= 1.0, "a fraction in (0, 1]"),
        ];
        for (name, value, wanted, ok, what) in own {
            match (value, wanted) {
                (None, true) => return bad(name, format!("{} needs it", m.name())),
                (Some(_), false) => return bad(name, format!("{} does not use it", m.name())),
                (Some(v), true) if !(v.is_finite() && ok(v)) => return bad(name, format!("{v} is not {what}")),
                _ => {}
            }
        }
        if let (Some(a), Some(u)) = (self.alpha, self.upper_bound) {
            if a >= u {
                return bad("upper_bound", format!("{u} must be above alpha ({a}), or no request takes part"));
            }
        }
        Ok(())
    }

    /// The command line's overrides.
    pub fn with_overrides(mut self, o: &Overrides) -> Self {
        if let Some(l) = &o.layers {
            self.layers = l.clone();
        }
        o.apply_shared(&mut self.v_steps, &mut self.templates, &mut self.mom2_tokens, &mut self.target_loss);
        self
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

    /// Every override reaches both kinds of hyper-parameters; ROME edits the first layer given;
    /// no override leaves a value as it was.
    #[test]
    fn overrides_reach_rome_and_the_batch_methods() {
        let o = Overrides { steps: Some(0), templates: Some(0), cov_tokens: Some(4096), layers: Some(vec![2, 3]), target_loss: Some(TargetLoss::Published) };
        let r = RomeHparams::smollm2().with_overrides(&o);
        assert_eq!((r.layer, r.v_steps, r.templates.per_prefix, r.mom2_tokens, r.target_loss), (2, 1, 0, 4096, TargetLoss::Published));
        let b = BatchHparams::smollm2(BatchMethod::Memit).with_overrides(&o);
        assert_eq!((b.layers.clone(), b.v_steps, b.templates.per_prefix, b.mom2_tokens, b.target_loss), (vec![2, 3], 1, 0, 4096, TargetLoss::Published));
        let none = Overrides::default();
        assert_eq!(format!("{:?}", RomeHparams::smollm2().with_overrides(&none)), format!("{:?}", RomeHparams::smollm2()));
        assert_eq!(format!("{:?}", BatchHparams::smollm2(BatchMethod::Memit).with_overrides(&none)), format!("{:?}", BatchHparams::smollm2(BatchMethod::Memit)));
    }

    #[test]
    fn batch_defaults_parse_and_name_their_method() {
        for m in BatchMethod::ALL {
            let hp = BatchHparams::smollm2(m);
            assert_eq!(hp.method, m);
            assert!(!hp.layers.is_empty());
            for field in ["layers", "v_steps", "v_lr", "mom2_tokens", "templates"] {
                assert!(hp.why.contains_key(field), "{}: no why for {field}", m.name());
            }
        }
    }

    #[test]
    fn bad_batch_files_name_the_file_and_field() {
        let good = serde_json::to_value(BatchHparams::smollm2(BatchMethod::Memit)).unwrap();
        let with = |field: &str, v: serde_json::Value| {
            let mut x = good.clone();
            x[field] = v;
            x.to_string()
        };
        let cases = [
            (with("layers", serde_json::json!([])), "'layers'"),
            (with("layers", serde_json::json!([5, 4])), "'layers'"),
            (with("mom2_update_weight", serde_json::json!(-3.0)), "'mom2_update_weight'"),
            (with("l2", serde_json::json!(10.0)), "'l2'"),
            (with("method", serde_json::json!("rome")), "bad hparams"),
            (with("alpha", serde_json::json!(2.5)), "'alpha'"),
            (with("surprise", serde_json::json!(1)), "unknown field"),
        ];
        for (text, want) in cases {
            let e = BatchHparams::parse(&text, "m.json").unwrap_err().to_string();
            assert!(e.contains("m.json") && e.contains(want), "{want}: {e}");
        }
        let mut no_lambda = good.clone();
        no_lambda.as_object_mut().unwrap().remove("mom2_update_weight");
        let e = BatchHparams::parse(&no_lambda.to_string(), "m.json").unwrap_err().to_string();
        assert!(e.contains("'mom2_update_weight'") && e.contains("needs"), "{e}");
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
