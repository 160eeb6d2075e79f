//! The real model on every adapter: GPU logits against the f64 oracle on two short prompts,
//! and the facts it knows (greedy answers). CI runs `revive setup` first and sets
//! REVIVE_REQUIRE_MODEL=1, so a missing model fails instead of skipping.

mod common;
use common::*;
use revive::cpu::model::CpuModel;
use revive::model::forward::GpuModel;
use revive::model::generate::{argmax, generate, score, Sampling};
use revive::model::probe::Probes;
use revive::model::{load_gguf, Tok};
use std::sync::OnceLock;

struct Real {
    weights: revive::model::Weights,
    tok: Tok,
}

fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let path = revive::testing::smollm2_for_tests()?;
        let (weights, meta) = load_gguf(&path).unwrap();
        let tok = Tok::from_gguf(&meta, "smollm2").unwrap();
        Some(Real { weights, tok })
    })
    .as_ref()
}

#[test]
fn gpu_logits_match_the_f64_oracle() {
    let Some(m) = real() else { return };
    let cpu = CpuModel::new(&m.weights);
    let prompts = ["The capital of France is", "In 2024, 17 cats"];
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| m.tok.encode(p).unwrap()).collect();
    let (want, _) = cpu.forward(&seqs, &Probes::default());
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &m.weights))?;
        let got = ok(gm.last_logits(&seqs))?;
        for (i, p) in prompts.iter().enumerate() {
            let w = want[i].last().unwrap();
            let scale = w.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            compare(&format!("SmolLM2 logits after {p:?}"), &got[i], w, Tolerance::new(1e-4 * scale, 1e-4, 1e-4))?;
        }
        Ok(())
    });
}

#[test]
fn it_knows_its_facts() {
    let Some(m) = real() else { return };
    // Two hand-checked facts, then a spread of the experiment's retention set
    // (assets/facts/geo/known.json, selected with an independent NumPy forward).
    let geo = revive::eval::retention::load_facts(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/facts/geo/known.json"))).unwrap();
    assert!(geo.len() >= 500, "the retention set has {} facts", geo.len());
    let mut facts: Vec<(&str, &str)> = vec![("The capital of France is", " Paris"), ("The mother tongue of Danielle Darrieux is", " French")];
    facts.extend(revive::eval::experiment::spread(geo.len(), 6).into_iter().map(|i| (geo[i].prompt.as_str(), geo[i].answer.as_str())));
    // And of each control relation no edit touches (capitals, element symbols, opposites).
    for (relation, at_least) in [("P36", 40), ("P246", 30), ("P461", 40)] {
        let of: Vec<&revive::eval::retention::Fact> = geo.iter().filter(|f| f.relation_id.as_deref() == Some(relation)).collect();
        assert!(of.len() >= at_least, "the retention set has {} facts of {relation}", of.len());
        facts.extend(revive::eval::experiment::spread(of.len(), 3).into_iter().map(|i| (of[i].prompt.as_str(), of[i].answer.as_str())));
    }
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &m.weights))?;
        let seqs: Vec<Vec<u32>> = facts.iter().map(|(p, _)| m.tok.encode(p).unwrap()).collect();
        let last = ok(gm.last_logits(&seqs))?;
        for ((prompt, answer), logits) in facts.iter().zip(&last) {
            let got = ok(m.tok.decode(&[argmax(logits)]))?;
            let first = ok(m.tok.decode(&m.tok.encode(answer).unwrap()[..1]))?;
            if got != first {
                return Err(format!("{prompt:?} -> {got:?}, expected {answer:?}"));
            }
        }
        // Generation (KV cache) agrees with the batched forward on the first token, and the
        // answer is by far the most likely continuation.
        let ids = ok(generate(&gm, &seqs[0], 2, Sampling::default(), m.tok.eos(), |_| {}))?;
        if ok(m.tok.decode(&ids[..1]))? != " Paris" {
            return Err(format!("generate gave {:?}", m.tok.decode(&ids)));
        }
        let lp = ok(score(&gm, &seqs[0], &m.tok.encode(" Paris").unwrap()))?;
        if lp[0] < (0.5f64).ln() {
            return Err(format!("p(' Paris') = {} is under 0.5", lp[0].exp()));
        }
        Ok(())
    });
}
