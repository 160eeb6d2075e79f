//! The experiment's general-ability measures on a tiny random model, on every adapter:
//! perplexity and the agreement with an unedited model against f64 references, and a whole
//! checkpoint (CounterFact scores, retention, fluency, spectral states) before and after a
//! weight change.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;
use common::*;
use revive::cpu::model::CpuModel;
use revive::edit::guard::{RankRule, SpectralGuard};
use revive::edit::request::EditRequest;
use revive::eval::experiment::Measures;
use revive::eval::general::{agreement, next_token_logprobs, perplexity, ProseSet};
use revive::eval::retention::Fact;
use revive::linalg::svd::SvdOptions;
use revive::model::batch::PassBudget;
use revive::model::forward::GpuModel;
use revive::model::random::random_weights;
use revive::model::{Config, Tok};

fn config() -> Config {
    Config { ffn_hidden: 120, ..Config::tiny_llama() }
}

fn tok() -> Tok {
    word_tokenizer(config().vocab_size)
}

/// Sequences of awkward lengths (2, a prime, one longer than the others).
fn sequences() -> Vec<Vec<u32>> {
    let v = config().vocab_size as u32;
    [2usize, 7, 13].iter().enumerate().map(|(s, &n)| (0..n).map(|i| ((i * 7 + s * 13 + 3) as u32) % v).collect()).collect()
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z = row.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    row.iter().map(|x| x - z).collect()
}

#[test]
fn perplexity_matches_the_f64_reference() {
    let w = random_weights(&config(), 3);
    let cpu = CpuModel::new(&w);
    let seqs = sequences();
    let (mut nll, mut n) = (0.0, 0);
    for s in &seqs {
        let (logits, _) = cpu.forward(std::slice::from_ref(s), &Default::default());
        for t in 0..s.len() - 1 {
            nll -= log_softmax(&logits[0][t])[s[t + 1] as usize];
            n += 1;
        }
    }
    let want = (nll / n as f64).exp();
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        // One sequence per pass and all in one pass: the same number.
        for budget in [PassBudget { tokens: 1, logit_rows: 1 }, PassBudget { tokens: 4096, logit_rows: 1024 }] {
            let got = ok(perplexity(&gm, &seqs, 1, budget))?;
            if !((got - want).abs() <= 1e-4 * want) {
                return Err(format!("perplexity {got} ({budget:?}), f64 reference {want}"));
            }
        }
        Ok(())
    });
}

#[test]
fn agreement_against_the_unedited_model_and_a_changed_one() {
    let w = random_weights(&config(), 4);
    let prompts = sequences();
    // The f64 reference of KL(unedited ‖ changed) on the last tokens.
    let mut changed = w.clone();
    let name = revive::model::names::down_name(1);
    for x in changed.tensors.get_mut(&name).unwrap().data.iter_mut() {
        *x *= 1.5;
    }
    let (a, b) = (CpuModel::new(&w), CpuModel::new(&changed));
    let mut kl = 0.0;
    for s in &prompts {
        let (la, _) = a.forward(std::slice::from_ref(s), &Default::default());
        let (lb, _) = b.forward(std::slice::from_ref(s), &Default::default());
        let (p, q) = (log_softmax(la[0].last().unwrap()), log_softmax(lb[0].last().unwrap()));
        kl += p.iter().zip(&q).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
    }
    let want = kl / prompts.len() as f64;
    for_each_gpu(|gpu| {
        let reference = ok(next_token_logprobs(&ok(GpuModel::new(gpu, &w))?, &prompts))?;
        let same = ok(agreement(&reference, &ok(next_token_logprobs(&ok(GpuModel::new(gpu, &w))?, &prompts))?))?;
        if !(same.kl.abs() < 1e-6 && same.top1 == 1.0) {
            return Err(format!("the unedited model against itself: {same:?}"));
        }
        let moved = ok(agreement(&reference, &ok(next_token_logprobs(&ok(GpuModel::new(gpu, &changed))?, &prompts))?))?;
        if !((moved.kl - want).abs() <= 1e-3 * want + 1e-6) || !(want > 1e-4) {
            return Err(format!("KL {} against the f64 reference {want}", moved.kl));
        }
        Ok(())
    });
}

fn request(i: usize) -> EditRequest {
    EditRequest {
        case_id: Some(i as u64),
        subject: format!("w{}", 10 + i),
        prompt: "{} w60 w61".into(),
        target_new: format!(" w{}", 70 + i),
        target_true: Some(" w5".into()),
        paraphrase_prompts: vec![format!("w40 w{} w61", 10 + i)],
        neighborhood_prompts: vec![format!("w{} w60 w61", 30 + i), format!("w{} w60 w61", 31 + i)],
        generation_prompts: vec![format!("w{} w62", 10 + i)],
        relation_id: None,
        locality: vec![],
        portability: vec![],
    }
}

#[test]
fn a_checkpoint_measures_everything_and_sees_a_weight_change() {
    let w = random_weights(&config(), 5);
    let tok = tok();
    let requests: Vec<EditRequest> = (0..5).map(request).collect();
    let name = revive::model::names::down_name(1);
    for_each_gpu(|gpu| {
        let mut gm = ok(GpuModel::new(gpu, &w))?;
        let seqs = sequences();
        let prose = ProseSet { perplexity: seqs.clone(), agreement: seqs.clone(), unscored: 1 };
        let reference = ok(next_token_logprobs(&gm, &prose.agreement))?;
        let w0 = gm.tensor(&name).map_err(|e| e.to_string())?.clone();
        let w0 = ok(revive::ops::elementwise::scale(gpu, &w0, 1.0))?;
        let opts = SvdOptions::default();
        let guard = ok(SpectralGuard::compute(gpu, &w0, &name, RankRule::Rank(3), &opts))?;
        let known: Vec<Fact> = (0..4).map(|i| Fact { prompt: format!("w{} w1", 20 + i), answer: " w2".into(), relation_id: Some(if i < 3 { "P17" } else { "P36" }.into()) }).collect();
        let mut m = Measures {
            sample: 3,
            known,
            prose: Some(prose),
            reference: Some(reference),
            fluency_prompts: 2,
            fluency_tokens: 6,
            spectral: vec![(name.clone(), w0, Measures::basis_of(&guard))],
            svd: opts,
            locality_reference: Default::default(),
        };
        // EasyEdit's locality against the unedited model, for the requests the checkpoint
        // samples (all of them but one: a set missing a reference has no locality).
        let sampled = m.sampled(2, 5);
        if sampled != [vec![2, 3, 4], vec![0, 1, 3]] {
            return Err(format!("sampled {sampled:?}"));
        }
        let tops = ok(revive::eval::counterfact::locality_tops(&gm, &tok, &requests))?;
        m.locality_reference = tops.into_iter().enumerate().filter(|(i, _)| *i != 4).collect();
        let before = ok(m.checkpoint(&gm, &tok, "arm", &requests, 5, 2, 1, 0.0))?;
        if before.recent.unwrap().locality.is_some() || before.all.unwrap().locality != Some(1.0) || before.all.unwrap().rewrite_acc.is_none() {
            return Err(format!("locality of the unedited model: recent {:?}, all {:?}", before.recent, before.all));
        }
        let s = &before.matrices[0];
        if !(before.agreement.unwrap().kl.abs() < 1e-6 && s.drift == 0.0 && s.leak_left == 0.0 && (s.left_similarity - 1.0).abs() < 1e-4) {
            return Err(format!("the unedited model at its own checkpoint: {before:?}"));
        }
        let (recent, all) = (before.recent.unwrap(), before.all.unwrap());
        // Both samples are scored in one call over their union; each equals its own set scored
        // alone (locality against the same model: 1, and none for the set lacking a reference).
        for (got, set) in [(recent, &sampled[0]), (all, &sampled[1])] {
            let reqs: Vec<EditRequest> = set.iter().map(|&i| requests[i].clone()).collect();
            let reference: Option<Vec<Vec<Vec<u32>>>> = set.iter().map(|i| m.locality_reference.get(i).cloned()).collect();
            let want = revive::eval::counterfact::cf_scores(&ok(revive::eval::counterfact::facts_metrics_against(&gm, &tok, &reqs, reference.as_deref()))?);
            if got != want {
                return Err(format!("the checkpoint's scores of {set:?}: {got:?}, scored alone {want:?}"));
            }
        }
        let rel: Vec<(String, usize)> = before.known_by_relation.iter().map(|r| (r.relation.clone(), r.total)).collect();
        let correct: usize = before.known_by_relation.iter().map(|r| r.correct).sum();
        if rel != [("P17".to_string(), 3), ("P36".to_string(), 1)] || Some(correct) != before.known_correct {
            return Err(format!("known facts by relation {:?} against {:?} in all", before.known_by_relation, before.known_correct));
        }
        let split = before.measure_split.ok_or("no time per measure")?;
        let parts = [split.counterfact, split.known, split.perplexity, split.agreement, split.fluency, split.spectral];
        if parts.iter().any(|&t| !(t >= 0.0)) || parts.iter().sum::<f64>() > before.measure_seconds + 1e-3 {
            return Err(format!("time per measure {split:?} against {} s in all", before.measure_seconds));
        }
        if (recent.requests, all.requests) != (3, 3) || before.known_total != 4 || !before.fluency.unwrap().is_finite() || !before.perplexity.unwrap().is_finite() {
            return Err(format!("what was measured: {before:?}"));
        }
        // The same checkpoint again: the same numbers (sampling is seeded).
        let again = ok(m.checkpoint(&gm, &tok, "arm", &requests, 5, 2, 1, 0.0))?;
        if again.fluency != before.fluency || again.perplexity != before.perplexity {
            return Err("two measures of one model differ".into());
        }
        // Fluency reads the same prompts at every checkpoint: the model at 0 edits, measured
        // then, gives the same value (a curve that moves with its prompts would not).
        let at_start = ok(m.checkpoint(&gm, &tok, "arm", &requests, 0, 0, 0, 0.0))?;
        if at_start.fluency != before.fluency {
            return Err(format!("fluency of one model at 0 and at 5 edits: {:?} and {:?}", at_start.fluency, before.fluency));
        }
        // A change of the edited matrix shows in drift, agreement and perplexity.
        let delta = ok(gpu.upload(&random_vec(&mut rng(9), w.tensors[&name].data.len()), &w.tensors[&name].shape))?;
        ok(revive::ops::elementwise::axpy(gpu, 0.5, &delta, gm.tensor(&name).map_err(|e| e.to_string())?))?;
        let after = ok(m.checkpoint(&gm, &tok, "arm", &requests, 5, 2, 1, 0.0))?;
        if !(after.all.unwrap().locality.unwrap() < 1.0) {
            return Err(format!("locality after a weight change: {:?}", after.all));
        }
        let s = &after.matrices[0];
        let lost = after.known_loss.map(|l| l.lost);
        if !(s.drift > 0.0 && s.leak_left > 0.0 && after.agreement.unwrap().kl > 1e-6 && after.perplexity != before.perplexity) || lost != after.known_correct.map(|k| after.known_total - k) {
            return Err(format!("after a change: {after:?}"));
        }
        // No perplexity tokens asked for (--ppl-tokens 0): no perplexity, the agreement still.
        m.prose.as_mut().unwrap().perplexity.clear();
        let no_ppl = ok(m.checkpoint(&gm, &tok, "arm", &requests, 5, 2, 1, 0.0))?;
        if no_ppl.perplexity.is_some() || no_ppl.agreement != after.agreement {
            return Err(format!("without perplexity sequences: {no_ppl:?}"));
        }
        // Requests without generation prompts generate after their rewrite prompts.
        let bare: Vec<EditRequest> = requests.iter().map(|r| EditRequest { generation_prompts: vec![], ..r.clone() }).collect();
        let fluent = ok(m.checkpoint(&gm, &tok, "arm", &bare, 5, 2, 1, 0.0))?;
        if !fluent.fluency.is_some_and(f64::is_finite) {
            return Err(format!("fluency without generation prompts: {:?}", fluent.fluency));
        }
        let _ = &mut gm;
        Ok(())
    });
}

/// CounterFact metrics of many requests scored together (a few planned passes) against an f64
/// reference of each prompt's target log-probabilities, with requests that differ in their
/// number of paraphrases and neighbours and one without target_true, so that a result read
/// from the wrong request or prompt shows; and the batch takes far fewer dispatches than the
/// requests one by one. EasyEdit's token metrics likewise: rewrite and rephrase accuracy from
/// the reference's argmax at each target position, the locality predictions along each
/// locality answer (a request's own pairs, or its neighbours with target_true), and locality
/// against a reference: 1 against the same model, below 1 after a weight change, and
/// through the session's measure (before → after).
#[test]
fn counterfact_metrics_of_many_requests_match_the_f64_reference() {
    use revive::edit::request::PromptAnswer;
    use revive::edit::session::Measure;
    use revive::eval::counterfact::{fact_metrics, facts_metrics, facts_metrics_against, BatchMetrics};
    let w = random_weights(&config(), 6);
    let cpu = CpuModel::new(&w);
    let tok = tok();
    let mut requests: Vec<EditRequest> = (0..7).map(request).collect();
    requests[2].paraphrase_prompts.push("w41 w12 w60 w61 w62".into());
    requests[3].neighborhood_prompts.clear();
    requests[4].target_true = None;
    requests[5].target_new = " w71 w72".into();
    requests[6].locality = vec![PromptAnswer::new("w20 w21", " w22 w23 w24"), PromptAnswer::new("w25", " w26")];
    // The reference's top token at each position of `target` after `prompt`; a near-tie
    // between the first two is refused (rounding would decide it).
    let tops = |prompt: &str, target: &str| -> Result<Vec<u32>, String> {
        let p = tok.encode(prompt).unwrap();
        let t = tok.encode(target).unwrap();
        let seq: Vec<u32> = p.iter().chain(&t).copied().collect();
        let (logits, _) = cpu.forward(std::slice::from_ref(&seq), &Default::default());
        (0..t.len())
            .map(|j| {
                let z = &logits[0][p.len() - 1 + j];
                let mut order: Vec<usize> = (0..z.len()).collect();
                order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
                if !(z[order[0]] - z[order[1]] > 1e-3) {
                    return Err(format!("{prompt:?} + {target:?}: a near-tie at position {j}; pick other test inputs"));
                }
                Ok(order[0] as u32)
            })
            .collect()
    };
    // The reference's greedy continuation of `prompt`, `n` tokens, as text.
    let greedy = |prompt: &str, n: usize| -> String {
        let mut ids = tok.encode(prompt).unwrap();
        for _ in 0..n {
            let (logits, _) = cpu.forward(std::slice::from_ref(&ids), &Default::default());
            let z = logits[0].last().unwrap();
            ids.push((0..z.len()).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap() as u32);
        }
        ids[ids.len() - n..].iter().map(|t| format!(" w{t}")).collect()
    };
    // Portability pairs on two requests, one of them repeating its own locality pair (scored
    // once, read twice); answers the model gives (all, or all but the last token) so that an
    // accuracy read from the wrong pair shows. Request 6's pairs fall in two categories of
    // unequal size: its score is the mean of the two categories' means, not of its pairs.
    let given = greedy("w30 w31 w32", 3);
    let half = format!("{} w96", greedy("w44", 2));
    let in_category = |p: PromptAnswer, c: &str| PromptAnswer { category: Some(c.into()), ..p };
    requests[6].portability = vec![
        in_category(PromptAnswer::new("w25", " w26"), "Reasoning"),
        in_category(PromptAnswer::new("w30 w31 w32", given), "Subject_Aliasing"),
        in_category(PromptAnswer::new("w44", half.clone()), "Reasoning"),
    ];
    requests[1].portability = vec![PromptAnswer::new("w44", half)];
    let accuracy = |prompt: &str, target: &str| -> Result<f64, String> {
        let t = tok.encode(target).unwrap();
        Ok(tops(prompt, target)?.iter().zip(&t).filter(|(a, b)| a == b).count() as f64 / t.len() as f64)
    };
    let nll = |prompt: &str, target: &str| -> f64 {
        let p = tok.encode(prompt).unwrap();
        let t = tok.encode(target).unwrap();
        let seq: Vec<u32> = p.iter().chain(&t).copied().collect();
        let (logits, _) = cpu.forward(std::slice::from_ref(&seq), &Default::default());
        -(0..t.len()).map(|j| log_softmax(&logits[0][p.len() - 1 + j])[t[j] as usize]).sum::<f64>() / t.len() as f64
    };
    for_each_fresh_gpu(true, |gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        let before = gpu.runtime_stats();
        let together = ok(facts_metrics(&gm, &tok, &requests))?;
        let batched = (gpu.runtime_stats() - before).dispatches;
        let before = gpu.runtime_stats();
        let alone: Vec<_> = requests.iter().map(|r| ok(fact_metrics(&gm, &tok, r))).collect::<Result<_, _>>()?;
        let one_by_one = (gpu.runtime_stats() - before).dispatches;
        if together.len() != requests.len() || 3 * batched > one_by_one {
            return Err(format!("{} metrics for {} requests; {batched} dispatches together against {one_by_one} one by one", together.len(), requests.len()));
        }
        for (i, (r, (m, a))) in requests.iter().zip(together.iter().zip(&alone)).enumerate() {
            let want_new = nll(&r.full_prompt(), &r.target_new);
            if !((m.new.nll - want_new).abs() <= 1e-4 * want_new.abs().max(1.0)) || !((m.new.nll - a.new.nll).abs() <= 1e-4) {
                return Err(format!("request {i}: NLL of target_new {} together, {} alone, f64 reference {want_new}", m.new.nll, a.new.nll));
            }
            // Each share from the reference's preferences. A near-tie (none at these seeds) is
            // refused outright: rounding would decide it, so the test must choose other inputs.
            let prefers_new = |prompt: &str| -> Result<Option<bool>, String> {
                let Some(t) = r.target_true.as_deref() else { return Ok(None) };
                let (n, t) = (nll(prompt, &r.target_new), nll(prompt, t));
                if !((n - t).abs() > 1e-3) {
                    return Err(format!("request {i}: {prompt:?} is a near-tie ({n} vs {t}); pick other test inputs"));
                }
                Ok(Some(n < t))
            };
            let share = |prompts: &[String], want: bool| -> Result<Option<f64>, String> {
                let got = prompts.iter().map(|p| prefers_new(p)).collect::<Result<Vec<_>, _>>()?;
                Ok((r.target_true.is_some() && !prompts.is_empty()).then(|| got.iter().filter(|&&g| g == Some(want)).count() as f64 / prompts.len() as f64))
            };
            let expect = (prefers_new(&r.full_prompt())?, share(&r.paraphrase_prompts, true)?, share(&r.neighborhood_prompts, false)?);
            if (m.efficacy, m.paraphrase, m.neighborhood) != expect || m.true_.is_some() != r.target_true.is_some() {
                return Err(format!("request {i}: (efficacy, paraphrase, neighbourhood) {:?}, f64 reference {expect:?}", (m.efficacy, m.paraphrase, m.neighborhood)));
            }
            let rephrase = r.paraphrase_prompts.iter().map(|p| accuracy(p, &r.target_new)).collect::<Result<Vec<_>, _>>()?;
            let want_rephrase = (!rephrase.is_empty()).then(|| rephrase.iter().sum::<f64>() / rephrase.len() as f64);
            let want_locality: Vec<Vec<u32>> = if !r.locality.is_empty() {
                r.locality.iter().map(|l| tops(&l.prompt, &l.answer)).collect::<Result<_, _>>()?
            } else if let Some(t) = r.target_true.as_deref() {
                r.neighborhood_prompts.iter().map(|p| tops(p, t)).collect::<Result<_, _>>()?
            } else {
                vec![]
            };
            if m.rewrite_acc != accuracy(&r.full_prompt(), &r.target_new)? || m.rephrase_acc != want_rephrase || m.locality_top != want_locality || m.locality.is_some() {
                return Err(format!("request {i}: rewrite/rephrase accuracy {:?}, locality predictions {:?} ({:?}); f64 reference {:?} {want_locality:?}", (m.rewrite_acc, m.rephrase_acc), m.locality_top, m.locality, want_rephrase));
            }
            let portable = r.portability.iter().map(|p| accuracy(&p.prompt, &p.answer)).collect::<Result<Vec<_>, _>>()?;
            let mut by_category: std::collections::HashMap<Option<String>, Vec<f64>> = Default::default();
            for (p, a) in r.portability.iter().zip(&portable) {
                by_category.entry(p.category.clone()).or_default().push(*a);
            }
            let means: Vec<f64> = by_category.values().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect();
            let want_portability = (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64);
            if !portable.is_empty() && !(portable.iter().sum::<f64>() > 0.5) {
                return Err(format!("request {i}: the reference gives none of the portability answers ({portable:?}); the test reads nothing"));
            }
            if m.portability.map(|x| (x * 1e9).round()) != want_portability.map(|x| (x * 1e9).round()) || a.portability != m.portability {
                return Err(format!("request {i}: portability {:?} together, {:?} alone, f64 reference {want_portability:?}", m.portability, a.portability));
            }
        }
        // Locality against the model itself: everything kept.
        let reference: Vec<Vec<Vec<u32>>> = together.iter().map(|m| m.locality_top.clone()).collect();
        if ok(revive::eval::counterfact::locality_tops(&gm, &tok, &requests))? != reference {
            return Err("locality_tops differs from the measure's own locality predictions".into());
        }
        let same = ok(facts_metrics_against(&gm, &tok, &requests, Some(&reference)))?;
        let with_locality = |ms: &[revive::eval::counterfact::FactMetrics]| -> Vec<f64> { ms.iter().filter_map(|m| m.locality).collect() };
        if with_locality(&same).len() != 5 || with_locality(&same).iter().any(|&l| l != 1.0) {
            return Err(format!("locality against the same model: {:?}", with_locality(&same)));
        }
        // The session's measure: the one after a batch reads the one before.
        let mut measure = BatchMetrics::new(vec![]);
        let before = ok(measure.measure(&gm, &tok, &requests, None))?;
        let after = ok(measure.measure(&gm, &tok, &requests, Some(&before)))?;
        if before["locality"] != serde_json::Value::Null || after["locality"].as_f64() != Some(1.0) || after["rewrite_acc"].as_f64().is_none() || after["portability"].as_f64().is_none() {
            return Err(format!("the session's locality: before {}, after {}", before["locality"], after["locality"]));
        }
        // Scopes: after only scores the batch after the edit (no locality: nothing before it);
        // off scores nothing.
        use revive::eval::counterfact::BatchScope;
        measure.scope = BatchScope::After;
        let skipped = ok(measure.measure(&gm, &tok, &requests, None))?;
        let after_only = ok(measure.measure(&gm, &tok, &requests, Some(&skipped)))?;
        if !skipped.is_null() || after_only["rewrite_acc"] != after["rewrite_acc"] || after_only["efficacy"] != after["efficacy"] || !after_only["locality"].is_null() {
            return Err(format!("after only: before {skipped}, after efficacy {} rewrite {} locality {}", after_only["efficacy"], after_only["rewrite_acc"], after_only["locality"]));
        }
        measure.scope = BatchScope::Off;
        if !ok(measure.measure(&gm, &tok, &requests, None))?.is_null() || !ok(measure.measure(&gm, &tok, &requests, Some(&before)))?.is_null() {
            return Err("scores measured with the batch's metrics off".into());
        }
        measure.scope = BatchScope::BeforeAndAfter;
        // A measure written before locality was measured (an older journal's) is no reference.
        let mut old = before.clone();
        old["requests"].as_array_mut().unwrap().iter_mut().for_each(|r| {
            r.as_object_mut().unwrap().remove("locality_top");
        });
        let after_old = ok(measure.measure(&gm, &tok, &requests, Some(&old)))?;
        if after_old["locality"] != serde_json::Value::Null {
            return Err(format!("locality against a measure without predictions: {}", after_old["locality"]));
        }
        // A weight change moves some predictions.
        let mut changed = w.clone();
        changed.tensors.get_mut("layers.1.w_down").unwrap().data.iter_mut().for_each(|v| *v *= -3.0);
        let moved = ok(facts_metrics_against(&ok(GpuModel::new(gpu, &changed))?, &tok, &requests, Some(&reference)))?;
        let l = with_locality(&moved);
        if l.len() != 5 || !(l.iter().sum::<f64>() < 5.0) || l.iter().any(|&x| !(0.0..=1.0).contains(&x)) {
            return Err(format!("locality after a weight change: {l:?}"));
        }
        Ok(())
    });
}

/// The known facts' losses split by cause: a fact sharing an edited request's old answer, a fact
/// now answering with an edit's new target, both, neither, and a fact still answered.
#[test]
fn known_facts_lost_are_attributed_to_the_edits() {
    use revive::eval::retention::{known_loss, FactCheck, KnownLoss};
    let tok = tok();
    let edited: Vec<EditRequest> = (0..3).map(request).collect(); // true " w5", new " w70" … " w72"
    let got = |answer: &str| tok.decode(&tok.encode(answer).unwrap()[..1]).unwrap();
    let check = |answer: &str, now: &str| FactCheck { prompt: "p".into(), answer: answer.into(), relation_id: None, got: got(now), correct: got(answer) == got(now), logp: 0.0 };
    let checks = [
        check(" w5", " w71"),  // shares the old answer and went to a new target
        check(" w5", " w9"),   // shares the old answer only
        check(" w6", " w72"),  // went to a new target only
        check(" w6", " w8"),   // neither
        check(" w5", " w5"),   // still answered
        check(" w6", " w73"),  // w73 is no edit's target (request 3 is not edited)
    ];
    let want = KnownLoss { lost: 5, sharing_an_edited_answer: 2, to_an_edit_target: 2 };
    assert_eq!(known_loss(&tok, &checks, &edited).unwrap(), want);
    assert_eq!(known_loss(&tok, &checks, &[]).unwrap(), KnownLoss { lost: 5, ..Default::default() });
}

/// Known facts checked on the GPU (greedy token and the answer's log-probability, from the
/// logits there) against the f64 reference, with prompts of different lengths, a repeated
/// prompt, answers of several tokens (only the first is checked), and answers the model does
/// and does not give.
#[test]
fn known_facts_match_the_f64_reference() {
    use revive::eval::retention::check_facts;
    let w = random_weights(&config(), 8);
    let cpu = CpuModel::new(&w);
    let tok = tok();
    // The reference's top token after a prompt, refusing a near-tie (rounding would decide it).
    let top_of = |prompt: &str| -> (u32, Vec<f64>) {
        let p = tok.encode(prompt).unwrap();
        let (logits, _) = cpu.forward(std::slice::from_ref(&p), &Default::default());
        let z = logits[0][p.len() - 1].clone();
        let mut order: Vec<usize> = (0..z.len()).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        assert!(z[order[0]] - z[order[1]] > 1e-3, "{prompt:?}: a near-tie; pick other test inputs");
        (order[0] as u32, log_softmax(&z))
    };
    let given = tok.decode(&[top_of("w22").0]).unwrap();
    let facts: Vec<Fact> = [("w20 w21", " w3".to_string()), ("w22", format!("{given} w5")), ("w20 w21", " w6".into()), ("w23 w24 w25 w26 w27", " w7".into())]
        .iter()
        .map(|(p, a)| Fact { prompt: p.to_string(), answer: a.clone(), relation_id: None })
        .collect();
    for_each_gpu(|gpu| {
        let got = ok(check_facts(&ok(GpuModel::new(gpu, &w))?, &tok, &facts))?;
        for (f, g) in facts.iter().zip(&got) {
            let (top, logp) = top_of(&f.prompt);
            let first = tok.encode(&f.answer).unwrap()[0];
            let logp = logp[first as usize];
            if g.got != tok.decode(&[top]).unwrap() || g.correct != (top == first) || !((g.logp - logp).abs() <= 1e-4 * logp.abs().max(1.0)) {
                return Err(format!("{f:?}: got {g:?}; f64 reference top {top}, log p {logp}"));
            }
        }
        if !got[1].correct || got.iter().all(|g| g.correct) {
            return Err(format!("the test needs a fact the model gives and one it does not: {got:?}"));
        }
        Ok(())
    });
}

/// With a start token (w9 here) every measure reads what the same model reads without one when
/// each prompt's text begins with w9: CounterFact scores (prompts, paraphrases,
/// neighbourhoods, locality) and known facts; the pieces (targets, answers) get none, and a
/// context template's text holds none.
#[test]
fn measures_put_the_start_token_before_each_prompt() {
    use revive::edit::keys::context_templates;
    use revive::edit::target::target_batch;
    use revive::eval::counterfact::facts_metrics;
    use revive::eval::retention::check_facts;
    let w = random_weights(&config(), 6);
    let (plain, with) = (tok(), tok().with_start(vec![9]).unwrap());
    let spell = |p: &String| format!("w9 {p}");
    let requests: Vec<EditRequest> = (0..3).map(request).collect();
    let spelled: Vec<EditRequest> = requests
        .iter()
        .map(|r| EditRequest {
            prompt: spell(&r.prompt),
            paraphrase_prompts: r.paraphrase_prompts.iter().map(spell).collect(),
            neighborhood_prompts: r.neighborhood_prompts.iter().map(spell).collect(),
            ..r.clone()
        })
        .collect();
    let facts: Vec<Fact> = (0..4).map(|i| Fact { prompt: format!("w{} w61", 20 + i), answer: format!(" w{}", 3 + i), relation_id: None }).collect();
    let spelled_facts: Vec<Fact> = facts.iter().map(|f| Fact { prompt: spell(&f.prompt), ..f.clone() }).collect();
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        let (a, b) = (ok(facts_metrics(&gm, &with, &requests))?, ok(facts_metrics(&gm, &plain, &spelled))?);
        if a != b {
            return Err(format!("CounterFact scores with a start token {a:?}\nspelled out {b:?}"));
        }
        if a == ok(facts_metrics(&gm, &plain, &requests))? {
            return Err("the start token changed no CounterFact score: the test sees nothing".into());
        }
        let strip = |c: Vec<revive::eval::retention::FactCheck>| c.into_iter().map(|c| (c.got, c.correct, c.logp)).collect::<Vec<_>>();
        let (a, b) = (strip(ok(check_facts(&gm, &with, &facts))?), strip(ok(check_facts(&gm, &plain, &spelled_facts))?));
        if a != b {
            return Err(format!("known facts with a start token {a:?}\nspelled out {b:?}"));
        }
        let spec = revive::edit::hparams::Templates { prefixes: vec!["w3".into(), "w4 w5".into()], per_prefix: 2, length: 4, seed: 1 };
        for t in ok(context_templates(&gm, &with, &spec))?.iter().skip(1) {
            if !(t.starts_with("w3") || t.starts_with("w4 w5")) {
                return Err(format!("a context template holds the start token: {t:?}"));
            }
        }
        let batch = ok(target_batch(&with, &["{}".to_string()], "{} w60 w61", "w10", " w70 w71"))?;
        if batch.target != vec![70, 71] || batch.prompts[0].ids[0] != 9 {
            return Err(format!("target {:?}, prompt {:?}", batch.target, batch.prompts[0].ids));
        }
        Ok(())
    });
}
