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

/// Two hand-checked facts, then a spread of the experiment's retention set
/// (assets/facts/geo/known.json, selected with an independent NumPy forward) and of each control
/// relation no edit touches (capitals, element symbols, opposites): (prompt, answer).
fn facts() -> Vec<(String, String)> {
    let geo = revive::eval::retention::load_facts(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/facts/geo/known.json"))).unwrap();
    assert!(geo.len() >= 500, "the retention set has {} facts", geo.len());
    let mut facts: Vec<(&str, &str)> = vec![("The capital of France is", " Paris"), ("The mother tongue of Danielle Darrieux is", " French")];
    facts.extend(revive::eval::experiment::spread(geo.len(), 6).into_iter().map(|i| (geo[i].prompt.as_str(), geo[i].answer.as_str())));
    for (relation, at_least) in [("P36", 40), ("P246", 30), ("P461", 40)] {
        let of: Vec<&revive::eval::retention::Fact> = geo.iter().filter(|f| f.relation_id.as_deref() == Some(relation)).collect();
        assert!(of.len() >= at_least, "the retention set has {} facts of {relation}", of.len());
        facts.extend(revive::eval::experiment::spread(of.len(), 3).into_iter().map(|i| (of[i].prompt.as_str(), of[i].answer.as_str())));
    }
    facts.into_iter().map(|(p, a)| (p.to_string(), a.to_string())).collect()
}

#[test]
fn it_knows_its_facts() {
    let Some(m) = real() else { return };
    let facts = facts();
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

/// The model as llama.cpp's Q4_K_M mix would store it: the down-projections (1,536-wide rows)
/// in Q4_K and, every other layer, Q6_K; the 576-wide matrices in Q4_K's fallback Q5_0 and the
/// value projections in Q6_K's fallback Q8_0; norms in f32. Re-encoded from the shipped Q4_1
/// weights, written as a GGUF and read back, it still answers the facts as the original does.
#[test]
fn a_k_quant_mix_of_it_answers_as_it_does() {
    use revive::model::gguf::write::{quantize, GgufWriter};
    use revive::model::gguf::{canonical_name, load_gguf_bytes, GgmlType};
    let Some(m) = real() else { return };
    let t = std::time::Instant::now();
    let path = revive::testing::smollm2_for_tests().unwrap();
    let (_, meta) = load_gguf(&path).unwrap();
    let mut w = GgufWriter::default();
    meta.kv.iter().filter(|(k, _)| *k != "general.alignment").for_each(|(k, v)| {
        w.kv(k, v.clone());
    });
    let mut types = std::collections::BTreeMap::new();
    for t in &meta.tensors {
        let name = canonical_name(&t.name).unwrap();
        let layer: usize = t.name.split('.').nth(1).and_then(|i| i.parse().ok()).unwrap_or(0);
        let ty = match (t.dims.len(), t.dims[0] % 256 == 0) {
            (1, _) => GgmlType::F32,
            (_, true) if layer % 2 == 1 => GgmlType::Q6_K,
            (_, true) => GgmlType::Q4_K,
            _ if t.name.contains("attn_v") || t.name == "token_embd.weight" => GgmlType::Q8_0,
            _ => GgmlType::Q5_0,
        };
        *types.entry(format!("{ty:?}")).or_insert(0) += 1;
        w.tensor(&t.name, &t.dims, ty, quantize(ty, &m.weights.tensors[&name].data));
    }
    println!("re-encoded as {types:?}");
    let (mixed, _) = load_gguf_bytes(w.to_bytes(3), "smollm2-k-mix.gguf").unwrap();
    let down = &mixed.tensors["layers.4.w_down"].data;
    let orig = &m.weights.tensors["layers.4.w_down"].data;
    let err = down.iter().zip(orig).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt()
        / orig.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();

    // Q4_K through its whole range: the layer's error is that of a 4.5-bit code.
    assert!(err < 0.03, "layers.4.w_down re-encoded in Q4_K is {err:.4} off");
    println!("re-encoded in {:.2?}", t.elapsed());

    let facts = facts();
    let seqs: Vec<Vec<u32>> = facts.iter().map(|(p, _)| m.tok.encode(p).unwrap()).collect();
    for_each_gpu(|gpu| {
        let want = ok(ok(GpuModel::new(gpu, &m.weights))?.last_logits(&seqs))?;
        let got = ok(ok(GpuModel::new(gpu, &mixed))?.last_logits(&seqs))?;
        let kls: Vec<f64> = got.iter().zip(&want).map(|(g, w)| kl(w, g)).collect();
        let agree = got.iter().zip(&want).filter(|(g, w)| argmax(g) == argmax(w)).count();
        let mean = kls.iter().sum::<f64>() / kls.len() as f64;
        let worst = kls.iter().fold(0f64, |a, &b| a.max(b));
        println!("{}: {agree} of {} top tokens kept; KL from the original mean {mean:.4}, at most {worst:.4}", gpu.info().name, facts.len());
        // Measured on lavapipe (2026-12-06): 15 of 17 kept, KL mean 0.051, at most 0.12 — the
        // noise of a 4–6-bit code; a decoder that swaps Q4_K's nibbles gives KL 11–20.
        if agree + 3 < facts.len() || mean > 0.2 || worst > 0.5 || argmax(&got[0]) != argmax(&want[0]) {
            return Err(format!("the K-quant mix answers otherwise: {agree} of {} top tokens kept, KL mean {mean:.4}, at most {worst:.4}", facts.len()));
        }
        Ok(())
    });
}

/// KL(p ‖ q) of the next-token distributions of two logit vectors, in nats.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |x: &[f32]| {
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        x.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}
