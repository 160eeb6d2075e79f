//! One ROME edit on the real model: "The mother tongue of Danielle Darrieux is" → " English"
//! flips the answer, and "The capital of France is" still answers " Paris" — plain, and again
//! from the original weights through the REVIVE guard (τ = 0.5), whose written update must stay
//! out of the protected singular subspaces of layer 5's down-projection.
//!
//! CI's budget on a software adapter sets the settings, which this test names: only the plain
//! "{}" context, at most 12 Adam steps, C0 from 2,048 corpus tokens; the shipped hparams (11
//! contexts, 25 steps, 20k tokens) run in `revive edit` and `revive bench edit`. It runs on the
//! first adapter only: every kernel it uses is tested on each adapter, and the tiny-model ROME
//! test runs the whole edit on each.

mod common;
use common::*;
use revive::edit::covariance::layer_second_moment;
use revive::edit::hparams::RomeHparams;
use revive::edit::request::parse_requests;
use revive::edit::rome::CovSolver;
use revive::edit::run::run_rome;
use revive::edit::keys::subject_prompt;
use revive::eval::retention::{check_facts, Fact};
use revive::model::forward::GpuModel;
use revive::edit::guard::{RankRule, SpectralGuard};
use revive::linalg::svd::SvdOptions;

fn fact(prompt: &str, answer: &str) -> Fact {
    Fact { prompt: prompt.into(), answer: answer.into(), relation_id: None }
}

#[test]
fn rome_flips_darrieux_and_keeps_paris() {
    let Some(path) = revive::testing::smollm2_for_tests() else { return };
    let m = revive::model::load::load(path.to_str().unwrap()).unwrap();
    let gpu = &gpus()[0];
    let gm = GpuModel::new(gpu, &m.weights).unwrap();
    let mut hp = RomeHparams::smollm2();
    hp.templates.per_prefix = 0;
    hp.v_steps = 12;
    hp.mom2_tokens = 2048;

    let facts = [
        fact("The mother tongue of Danielle Darrieux is", " French"),
        fact("The mother tongue of Danielle Darrieux is", " English"),
        fact("The capital of France is", " Paris"),
    ];
    let before = check_facts(&gm, &m.tok, &facts).unwrap();
    assert!(before[0].correct && before[2].correct, "the unedited model should know both facts: {before:?}");

    let c0 = layer_second_moment(&gm, &m.tok, hp.layer, hp.mom2_tokens, false).unwrap();
    let cov = CovSolver::new(hp.layer, c0.tokens, &c0.c0, c0.dim).unwrap();
    let req = parse_requests(
        r#"{"subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English", "target_true": "French"}"#,
        "test",
    )
    .unwrap();
    let (_, records) = run_rome(&gm, &m.tok, &req, &hp, &cov, None, false, |_| Ok(None), |_| {}).unwrap();
    let r = &records[0];
    println!("before {:?}\nafter {:?}\ntarget {:?}", r.before, r.after, r.rome.target.history.last());

    let after = check_facts(&gm, &m.tok, &facts).unwrap();
    assert!(after[1].correct, "the edit did not flip the answer: {:?}", after[1]);
    assert!(after[2].correct, "the edit broke an unrelated fact: {:?}", after[2]);
    assert_eq!(r.after.efficacy, Some(true));
    assert!(r.after.new.p > 10.0 * r.before.new.p, "P(new) {} → {}", r.before.new.p, r.after.new.p);

    // Again from the original weights, through the guard. Measured on 2026-11-27: k = 136 of
    // 576 directions hold half of ‖W‖_F²; the filtered update keeps ~80 % of its norm and still
    // flips the answer (P(English) 0.82 instead of 0.96).
    let gm = GpuModel::new(gpu, &m.weights).unwrap();
    let name = revive::model::names::down_name(hp.layer);
    let guard = SpectralGuard::compute(gpu, gm.tensor(&name).unwrap(), &name, RankRule::Energy(0.5), &SvdOptions::default()).unwrap();
    let k = guard.info.k;
    assert!((60..=250).contains(&k) && guard.info.energy_fraction >= 0.5, "k = {k}, energy {}", guard.info.energy_fraction);
    let w_before = gpu.download(gm.tensor(&name).unwrap()).unwrap();
    let (_, records) = run_rome(&gm, &m.tok, &req, &hp, &cov, Some(revive::edit::run::Guarding { guard: &guard, targets_through: false }), false, |_| Ok(None), |_| {}).unwrap();
    let r = &records[0];
    let f = r.filter.expect("a guarded run reports the filter");
    println!("REVIVE k {k}: {f:?}\nafter {:?}", r.after);
    let w_after = gpu.download(gm.tensor(&name).unwrap()).unwrap();
    let written: Vec<f32> = w_after.iter().zip(&w_before).map(|(a, b)| a - b).collect();
    let leak = guard.leak(gpu, &gpu.upload(&written, &guard.info.shape).unwrap()).unwrap();
    // The f32 subtraction W_after − W_before carries rounding of ‖W‖ ≈ 170 against ‖ΔW‖ ≈ 9.
    assert!(leak.left < 1e-3 && leak.right < 1e-3, "the written update reaches the protected subspaces: {leak:?}");
    assert!(f.after.left <= 1e-5 && f.after.right <= 1e-5 && f.before.left > 0.1, "{f:?}");
    let after = check_facts(&gm, &m.tok, &facts).unwrap();
    assert!(after[1].correct && after[2].correct, "with REVIVE: {after:?}");
}

#[test]
fn the_subjects_last_token_is_found_in_context() {
    let Some(path) = revive::testing::smollm2_for_tests() else { return };
    let (_, meta) = revive::model::load_gguf(&path).unwrap();
    let tok = revive::model::Tok::from_gguf(&meta, "smollm2").unwrap();
    for template in ["{}", "Because it rained all day. {}"] {
        let p = subject_prompt(&tok, template, "The mother tongue of {} is", "Danielle Darrieux").unwrap();
        let upto = tok.decode(&p.ids[..=p.subject_last]).unwrap();
        assert!(upto.ends_with("Danielle Darrieux"), "{template}: tokens up to the subject read {upto:?}");
        assert!(tok.decode(&p.ids[p.subject_last + 1..]).unwrap() == " is", "{template}: {:?}", p.ids);
    }
    assert!(subject_prompt(&tok, "{}", "no slot here", "Danielle Darrieux").is_err());
    assert!(subject_prompt(&tok, "{}", "The mother tongue of {} is", " ").is_err());
}
