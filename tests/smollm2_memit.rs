//! One small MEMIT batch on the real model, as a journaled session: two counterfactual edits
//! flip, plain and again from the original weights with every layer's update through the
//! REVIVE guard, and "The capital of France is" still answers " Paris"; the same for NSE with
//! the guard (every write of each of its passes filtered).
//!
//! CI's budget on a software adapter sets the settings, which this test names: the shipped
//! layers (3-7) and λ, only the plain "{}" context, at most 12 Adam steps, C0 from 2,048 corpus
//! tokens, and a guard of fixed rank 32 per layer (the τ = 0.5 guard of the shipped runs needs
//! k ≈ 136 and costs a minute per layer on lavapipe). It runs on the first adapter only: the
//! tiny-model tests run every piece on each.

mod common;
use common::*;
use revive::edit::guard::RankRule;
use revive::edit::hparams::{BatchHparams, BatchMethod};
use revive::edit::request::parse_requests;
use revive::edit::session::{build_guards, build_method, MethodSpec, RunOptions, Session};
use revive::eval::counterfact::BatchMetrics;
use revive::eval::retention::{check_facts, Fact};
use revive::model::forward::GpuModel;

#[test]
fn a_memit_batch_flips_its_facts_with_and_without_revive_and_so_does_nse() {
    let Some(path) = revive::testing::smollm2_for_tests() else { return };
    faer::set_global_parallelism(faer::Par::Seq);
    let m = revive::model::load::load(path.to_str().unwrap()).unwrap();
    let gpu = &gpus()[0];
    let spec = |method| {
        let mut hp = BatchHparams::smollm2(method);
        hp.templates.per_prefix = 0;
        hp.v_steps = 12;
        hp.mom2_tokens = 2048;
        MethodSpec::Batch { hparams: hp }
    };
    let requests = parse_requests(
        r#"[{"case_id": 0, "subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English", "target_true": "French"},
            {"case_id": 1, "subject": "Italy", "prompt": "The capital of {} is", "target_new": "Berlin", "target_true": "Rome"}]"#,
        "test",
    )
    .unwrap();
    let paris = [Fact { prompt: "The capital of France is".into(), answer: " Paris".into(), relation_id: None }];
    let root = std::env::temp_dir().join(format!("revive-smollm2-memit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    for (kind, revive) in [(BatchMethod::Memit, None), (BatchMethod::Memit, Some(RankRule::Rank(32))), (BatchMethod::Nse, Some(RankRule::Rank(32)))] {
        let dir = root.join(format!("{}-{}", kind.name(), if revive.is_some() { "revive" } else { "plain" }));
        std::fs::create_dir_all(&dir).unwrap();
        let mut gm = GpuModel::new(gpu, &m.weights).unwrap();
        let config = Session::config_for(&gm, &m.tok, "smollm2", spec(kind), &requests, 2, revive, 2e-5, 2.0).unwrap();
        Session::write_new(&dir, &config, &requests).unwrap();
        let moments = Session::statistics(&gm, &m.tok, &config.spec, false).unwrap();
        let (method, _) = build_method(&gm, &m.tok, &config.spec, &config.templates, &moments).unwrap();
        let guards = match revive {
            Some(rule) => build_guards(&gm, &method.matrices(), rule, &Default::default(), |_| {}).unwrap(),
            None => Default::default(),
        };
        let mut session = Session::open(&dir, &gm, config, requests.clone(), method, guards).unwrap();
        let mut measure = BatchMetrics::new(paris.to_vec());
        session.run(&mut gm, &m.tok, &mut measure, &RunOptions { progress: false, max_batches: None }, |_| {}).unwrap();

        let (_, header) = session.journal.batches().next().expect("one batch journaled");
        let after = &session.journal.metrics_of(0).expect("its metrics").after;
        println!("{kind:?} {revive:?}: {}", serde_json::to_string(&header.method["targets"]).unwrap());
        println!("after: efficacy {} known {}", after["efficacy"], after["known_correct"]);
        // One update per edited layer and pass (MEMIT: one pass; NSE: one or two).
        let passes = if kind == BatchMethod::Nse { header.method["passes"].as_array().expect("NSE records its passes").iter().filter(|p| p["updated"] == true).count() } else { 1 };
        assert!(passes >= 1 && header.updates.len() == 5 * passes, "{kind:?}: {} updates in {passes} passes", header.updates.len());
        assert_eq!(after["efficacy"].as_f64(), Some(1.0), "{kind:?} {revive:?}: the batch did not flip both facts: {after}");
        for u in &header.updates {
            match (revive, u.filter) {
                (Some(_), Some(f)) => assert!(f.after.left <= 1e-5 && f.after.right <= 1e-5 && f.before.left > 1e-3, "{}: {f:?}", u.matrix),
                (None, None) => {}
                (r, f) => panic!("{}: REVIVE {r:?} but filter report {f:?}", u.matrix),
            }
        }
        assert!(check_facts(&gm, &m.tok, &paris).unwrap()[0].correct, "{kind:?} {revive:?}: the batch broke France → Paris");
    }
    let _ = std::fs::remove_dir_all(&root);
}
