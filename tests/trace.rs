//! Causal tracing: the GPU trace against the f64 oracle's, and what restoring a state must give
//! by construction.

mod common;

use common::*;
use revive::cpu::model::CpuModel;
use revive::eval::trace::{embedding_std, trace, trace_with_noise, Trace, TraceInput, TraceKind, TraceSettings};
use revive::model::forward::GpuModel;
use revive::model::probe::{Probes, Site};
use revive::model::random::random_weights;
use revive::model::{Config, Weights};

const KINDS: [TraceKind; 3] = [TraceKind::Hidden, TraceKind::Mlp, TraceKind::Attn];

/// A prompt of 7 tokens whose subject is tokens 2..=4, traced toward the oracle's top token
/// (a traced fact is one the model knows).
fn input(w: &Weights) -> TraceInput {
    let v = w.config.vocab_size as u32;
    let ids = vec![3, 11 % v, 29 % v, 5, 47 % v, 8, 19 % v];
    let (logits, _) = CpuModel::new(w).forward(std::slice::from_ref(&ids), &Default::default());
    let last = logits[0].last().unwrap();
    let target = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
    TraceInput { ids, subject: [2, 4], target }
}

fn settings(w: &Weights, max_batch: usize) -> TraceSettings {
    let d = w.config.hidden;
    let rows: Vec<Vec<f32>> = [11usize, 29, 5].iter().map(|&t| w.tensors["embed"].data[t * d..(t + 1) * d].to_vec()).collect();
    TraceSettings { samples: 3, noise: 3.0 * embedding_std(&rows), seed: 7, max_batch, window: 2, skip_unchanged_layers: false }
}

fn models() -> Vec<(&'static str, Weights)> {
    vec![
        ("llama", random_weights(&Config::tiny_llama(), 31)),
        ("gpt2", random_weights(&Config::tiny_gpt2(), 32)),
        ("qwen2", random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 33)),
    ]
}

fn close(what: &str, got: f64, want: f64) -> Result<(), String> {
    if !got.is_finite() || (got - want).abs() > 2e-5 + 2e-3 * want.abs() {
        return Err(format!("{what}: {got} against the oracle's {want}"));
    }
    Ok(())
}

/// The GPU's trace is the oracle's: the clean and corrupted probabilities and every restored
/// one, for every kind, with the passes split into batches of 4 sequences (the restoring runs
/// of one layer do not fit one) and not split, each pass from the embedding or from the first
/// layer it changes; and the oracle's from there is its own from the embedding.
#[test]
fn the_gpu_trace_is_the_oracles() {
    for (name, w) in models() {
        let cpu = CpuModel::new(&w);
        let input = input(&w);
        let full = trace(&cpu, &input, &KINDS, &settings(&w, 1000), &mut || {}).unwrap();
        let skipping = trace(&cpu, &input, &KINDS, &TraceSettings { skip_unchanged_layers: true, ..settings(&w, 1000) }, &mut || {}).unwrap();
        for (a, b) in full.iter().zip(&skipping) {
            for (x, y) in a.restored.iter().flatten().zip(b.restored.iter().flatten()) {
                assert!((x - y).abs() < 1e-6 * x.max(1e-3), "{name} {:?}: {x} from the embedding, {y} from the first layer changed", a.kind);
            }
        }
    }
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let cpu = CpuModel::new(&w);
            let input = input(&w);
            let want = ok(trace(&cpu, &input, &KINDS, &settings(&w, 1000), &mut || {}))?;
            let gm = ok(GpuModel::new(gpu, &w))?;
            for (max_batch, skip) in [(4, false), (1000, false), (4, true), (1000, true)] {
                let got = ok(trace(&gm, &input, &KINDS, &TraceSettings { skip_unchanged_layers: skip, ..settings(&w, max_batch) }, &mut || {}))?;
                for (g, c) in got.iter().zip(&want) {
                    let tag = format!("{name} {:?} batch {max_batch}, skipping layers {skip}", g.kind);
                    close(&format!("{tag} clean"), g.clean, c.clean)?;
                    close(&format!("{tag} corrupted"), g.corrupted, c.corrupted)?;
                    for (layer, (gr, cr)) in g.restored.iter().zip(&c.restored).enumerate() {
                        for (pos, (gp, cp)) in gr.iter().zip(cr).enumerate() {
                            close(&format!("{tag} restored at layer {layer} token {pos}"), *gp, *cp)?;
                        }
                    }
                }
            }
        }
        Ok(())
    });
}

/// Against ROME's way of tracing, in transformers (tests/data/trace_fixture.py: hooks that add
/// the noise to the embedding output and copy the clean row's state into the corrupted rows),
/// with the same noise: the oracle's and the GPU's traces give its probabilities.
#[test]
fn traces_match_romes_procedure_in_transformers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/trace");
    let w = revive::model::safetensors::load_dir(&dir).unwrap();
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let nums = |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let ids: Vec<u32> = nums(&want["ids"]).iter().map(|&x| x as u32).collect();
    let subject = nums(&want["subject"]);
    let input = TraceInput { ids, subject: [subject[0] as usize, subject[1] as usize], target: want["target"].as_u64().unwrap() as u32 };
    let noise: Vec<Vec<Vec<f32>>> = want["noise"].as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|t| nums(t).iter().map(|&x| x as f32).collect()).collect()).collect();
    let s = TraceSettings { samples: noise.len(), noise: 1.0, seed: 0, max_batch: 5, window: want["window"].as_u64().unwrap() as usize, skip_unchanged_layers: false };
    let check = |who: &str, traces: Vec<Trace>| -> Result<(), String> {
        for t in traces {
            let kind = format!("{:?}", t.kind).to_lowercase();
            let near = |what: String, got: f64, want: f64| if (got - want).abs() <= 2e-6 + 2e-4 * want { Ok(()) } else { Err(format!("{who} {kind} {what}: {got}, transformers {want}")) };
            near("clean".into(), t.clean, want["clean"].as_f64().unwrap())?;
            near("corrupted".into(), t.corrupted, want["corrupted"].as_f64().unwrap())?;
            for (layer, row) in want["restored"][&kind].as_array().unwrap().iter().enumerate() {
                for (token, p) in nums(row).into_iter().enumerate() {
                    near(format!("restored at layer {layer} token {token}"), t.restored[layer][token], p)?;
                }
            }
        }
        Ok(())
    };
    let cpu = CpuModel::new(&w);
    check("oracle", trace_with_noise(&cpu, &input, &KINDS, &s, &noise, &mut || {}).unwrap()).unwrap();
    let skipping = TraceSettings { skip_unchanged_layers: true, ..s.clone() };
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        check("gpu", ok(trace_with_noise(&gm, &input, &KINDS, &s, &noise, &mut || {}))?)?;
        check("gpu skipping layers", ok(trace_with_noise(&gm, &input, &KINDS, &skipping, &noise, &mut || {}))?)
    });
}

/// By construction, on the oracle: before the subject nothing was corrupted, so restoring
/// there gives the corrupted probability; the last layer's state at the last token is all the
/// logits read, so restoring it gives the clean one; the noise moves the probability; without
/// noise every run is the clean run.
#[test]
fn restoring_gives_what_it_must_by_construction() {
    for (name, w) in models() {
        let cpu = CpuModel::new(&w);
        let input = input(&w);
        let traces = trace(&cpu, &input, &KINDS, &settings(&w, 1000), &mut || {}).unwrap();
        let last_layer = w.config.n_layers - 1;
        for t in &traces {
            let what = format!("{name} {:?}", t.kind);
            assert!((t.clean - t.corrupted).abs() > 1e-4, "{what}: the noise did not move P ({} and {})", t.clean, t.corrupted);
            for layer in 0..w.config.n_layers {
                for pos in 0..input.subject[0] {
                    assert_eq!(t.restored[layer][pos], t.corrupted, "{what}: restored before the subject at layer {layer} token {pos}");
                }
            }
            if t.kind == TraceKind::Hidden {
                let back = t.restored[last_layer][input.ids.len() - 1];
                assert!((back - t.clean).abs() < 1e-6 * t.clean.max(1e-3), "{what}: the last state restored gives {back}, the clean run {}", t.clean);
            }
        }
        // Which is why those positions need no pass: their states are the clean run's.
        let before: Vec<Site> = (0..w.config.n_layers).flat_map(|layer| (0..input.subject[0]).map(move |pos| Site { layer, seq: 0, pos })).collect();
        let probes = Probes { residual: before.clone(), down_in: before.clone(), heads: before, ..Default::default() };
        let noise = revive::eval::trace::noise_of(&input, w.config.hidden, &settings(&w, 1000));
        let noisy = Probes { add_to_embedding: noise[0].iter().enumerate().map(|(j, v)| ((0, input.subject[0] + j), v.clone())).collect(), ..probes.clone() };
        let (_, clean) = cpu.forward(std::slice::from_ref(&input.ids), &probes);
        let (_, corrupted) = cpu.forward(std::slice::from_ref(&input.ids), &noisy);
        assert!(clean.residual == corrupted.residual && clean.down_in == corrupted.down_in && clean.heads == corrupted.heads, "{name}: a state before the subject moved with the noise");
        // After the subject, at a token that is not the subject's, the residual stream is the
        // clean embedding plus every attention and MLP output: all of them put back there (with
        // the noise on the subject) give the clean run's logits.
        let last = input.ids.len() - 1;
        let everywhere: Vec<Site> = (0..w.config.n_layers).map(|layer| Site { layer, seq: 0, pos: last }).collect();
        let (clean_logits, states) = cpu.forward(std::slice::from_ref(&input.ids), &Probes { down_in: everywhere.clone(), heads: everywhere.clone(), ..Default::default() });
        let restored = Probes {
            set_down_in: everywhere.iter().copied().zip(states.down_in).collect(),
            set_heads: everywhere.iter().copied().zip(states.heads).collect(),
            ..noisy.clone()
        };
        let (back, _) = cpu.forward(std::slice::from_ref(&input.ids), &restored);
        let (noisy_logits, _) = cpu.forward(std::slice::from_ref(&input.ids), &noisy);
        let gap = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(gap(&back[0][last], &clean_logits[0][last]) < 1e-4 && gap(&noisy_logits[0][last], &clean_logits[0][last]) > 1e-3, "{name}: every attention and MLP output put back at the last token does not give the clean logits");
        let quiet = TraceSettings { noise: 0.0, ..settings(&w, 1000) };
        for t in trace(&cpu, &input, &KINDS, &quiet, &mut || {}).unwrap() {
            let all: Vec<f64> = t.restored.iter().flatten().copied().chain([t.corrupted]).collect();
            assert!(all.iter().all(|p| (p - t.clean).abs() < 1e-7 * t.clean), "{name} {:?} without noise: {all:?} against {}", t.kind, t.clean);
        }
    }
}

/// The MLP and attention kinds restore a window of layers: with a window of 1 and one of all
/// layers, the oracle's trace differs (the window matters), and a window of all layers restores
/// the same states whatever the layer.
#[test]
fn the_mlp_and_attention_windows_are_the_layers_around_each() {
    for (name, w) in models() {
        let cpu = CpuModel::new(&w);
        let input = input(&w);
        let n = w.config.n_layers;
        for kind in [TraceKind::Mlp, TraceKind::Attn] {
            let one = trace(&cpu, &input, &[kind], &TraceSettings { window: 1, ..settings(&w, 1000) }, &mut || {}).unwrap().remove(0);
            let all = trace(&cpu, &input, &[kind], &TraceSettings { window: 2 * n, ..settings(&w, 1000) }, &mut || {}).unwrap().remove(0);
            let last = input.ids.len() - 1;
            // Every layer's window of 2n covers all layers: the same restoration at every layer.
            let column = all.at_token(last);
            assert!(column.iter().all(|p| (p - column[0]).abs() < 1e-12), "{name} {kind:?}: a window over all layers differs by layer: {column:?}");
            assert!((0..n).any(|l| (one.restored[l][last] - column[0]).abs() > 1e-9), "{name} {kind:?}: one layer restores what all do");
        }
    }
}

/// Bad settings, subjects, answers and tokens are errors, not panics.
#[test]
fn bad_trace_inputs_are_refused() {
    let w = random_weights(&Config::tiny_llama(), 31);
    let cpu = CpuModel::new(&w);
    let good = input(&w);
    let s = settings(&w, 10);
    let gpu_refuses = |inp: &TraceInput| {
        for gpu in gpus() {
            let gm = GpuModel::new(gpu, &w).unwrap();
            assert!(trace(&gm, inp, &KINDS, &settings(&w, 10), &mut || {}).is_err(), "{inp:?} accepted on the GPU");
        }
    };
    gpu_refuses(&TraceInput { target: w.config.vocab_size as u32, ..good.clone() });
    gpu_refuses(&TraceInput { ids: vec![w.config.vocab_size as u32; 7], ..good.clone() });
    for (what, inp, st) in [
        ("subject past the prompt", TraceInput { subject: [5, 9], ..good.clone() }, s.clone()),
        ("subject backwards", TraceInput { subject: [4, 2], ..good.clone() }, s.clone()),
        ("no samples", good.clone(), TraceSettings { samples: 0, ..s.clone() }),
        ("NaN noise", good.clone(), TraceSettings { noise: f64::NAN, ..s.clone() }),
        ("no window", good.clone(), TraceSettings { window: 0, ..s.clone() }),
    ] {
        let r: Result<Vec<Trace>, _> = trace(&cpu, &inp, &KINDS, &st, &mut || {});
        assert!(r.is_err(), "{what} accepted");
    }
}

/// The layers chosen from a trace: the run of consecutive layers whose effects sum the most,
/// the earliest on a tie, all layers where the method wants more than the model has.
#[test]
fn layers_are_chosen_where_the_effect_peaks() {
    use revive::eval::trace::choose_layers;
    let effect = [0.1, 0.3, 0.2, 0.05, 0.4, 0.35, 0.0];
    assert_eq!(choose_layers(&effect, 1), [4]);
    assert_eq!(choose_layers(&effect, 2), [4, 5]);
    assert_eq!(choose_layers(&effect, 3), [3, 4, 5]);
    assert_eq!(choose_layers(&effect, 0), [4], "at least one layer");
    assert_eq!(choose_layers(&effect, 9), (0..7).collect::<Vec<_>>());
    assert_eq!(choose_layers(&[0.2, 0.2, 0.1, 0.2, 0.2], 2), [0, 1], "the earliest of equal runs");
    assert_eq!(choose_layers(&[-0.1], 5), [0]);
    assert!(choose_layers(&[], 5).is_empty());
    // SmolLM2's mean MLP effect over 24 facts (docs/bench/trace-smollm2-lavapipe/trace.json,
    // window 10, ×1000): MEMIT's five layers are 1–5, ROME's one layer 4.
    let smollm2 = [387.0, 386.0, 393.0, 404.0, 407.0, 403.0, 108.0, 111.0, 95.0, 100.0, 115.0, 114.0, 88.0, 56.0, 36.0];
    assert_eq!((choose_layers(&smollm2, 5), choose_layers(&smollm2, 1)), ((1..6).collect::<Vec<_>>(), vec![4]));
}
