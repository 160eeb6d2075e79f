//! ROME end to end on a tiny random model: after one edit the target is the model's top
//! prediction after the prompt (and in context), while prompts without the subject barely move.

mod common;
use common::*;
use revive::edit::hparams::{RomeHparams, Templates};
use revive::edit::keys::SubjectPrompt;
use revive::edit::rome::{apply_update, rome_update_ids, CovSolver};
use revive::edit::target::TargetBatch;
use revive::model::batch::Batch;
use revive::model::forward::GpuModel;
use revive::model::generate::argmax;
use revive::ops::matmul::{gemm, Gemm};
use revive::model::random::random_weights;
use revive::model::Config;

/// A random tiny model is far less sensitive to δ than a trained one (its MLP outputs are small
/// next to the residual stream the final norm divides by), so δ gets room: little weight decay
/// and a loose clamp.
fn hparams(layer: usize) -> RomeHparams {
    RomeHparams {
        method: None,
        layer,
        v_steps: 60,
        v_lr: 1.0,
        v_weight_decay: 1e-3,
        clamp_norm_factor: 100.0,
        kl_factor: 0.0625,
        nll_stop: 0.05,
        target_loss: Default::default(),
        templates: Templates { prefixes: vec![], per_prefix: 0, length: 0, seed: 0 },
        mom2_tokens: 1,
        why: Default::default(),
    }
}

/// C0 of `layer` from the GPU keys of random token sequences, in f64 on the host.
fn covariance(gm: &GpuModel, layer: usize, seed: u64) -> Result<CovSolver, String> {
    let c = &gm.config;
    let mut r = rng(seed);
    let seqs: Vec<Vec<u32>> = (0..128).map(|_| random_vec(&mut r, 48).iter().map(|x| ((x + 1.0) * 0.5 * c.vocab_size as f32) as u32 % c.vocab_size as u32).collect()).collect();
    let keys = ok(gm.layer_keys(&ok(Batch::new(&seqs))?, layer))?;
    let n = keys.shape()[0];
    let kk = ok(gemm(gm.gpu(), &keys, &keys, None, Gemm { trans_a: true, alpha: 1.0 / n as f32, ..Default::default() }))?;
    let f = c.ffn_hidden;
    let c0 = ok(gm.gpu().download(&kk))?;
    ok(CovSolver::new(layer, n, &c0, f))
}

/// One edit of the tiny model: the subject's prompts and the new answer.
struct Edit {
    plain: SubjectPrompt,
    contexts: Vec<SubjectPrompt>,
    tb: TargetBatch,
    /// The new answer.
    t1: u32,
    /// The plain prompt's logits before the edit.
    before: Vec<f32>,
}

fn edit_of(gm: &GpuModel) -> Result<Edit, String> {
    let subject = [40u32, 41, 42];
    // The answer follows the subject directly. With tokens between them, a random model (whose
    // attention is nearly uniform) lets δ reach the answer only diluted, so δ must grow
    // huge; a trained model has the attention that carries the subject forward.
    let with = |prefix: &[u32]| {
        let ids: Vec<u32> = prefix.iter().chain(&subject).copied().collect();
        SubjectPrompt { ids, subject_last: prefix.len() + subject.len() - 1 }
    };
    let plain = with(&[]);
    let contexts = vec![plain.clone(), with(&[7, 8, 9]), with(&[60, 3])];
    let before = ok(gm.last_logits(std::slice::from_ref(&plain.ids)))?.remove(0);
    // The fifth most likely token as the new answer: not the answer by accident, yet within
    // reach of a random model in which δ reaches the last token through only two layers.
    let mut ranked: Vec<u32> = (0..before.len() as u32).collect();
    ranked.sort_by(|&a, &b| before[b as usize].total_cmp(&before[a as usize]));
    let t1 = ranked[4];
    let mut prompts = contexts.clone();
    let prompt_lens = contexts.iter().map(|p| p.ids.len()).collect();
    prompts.push(SubjectPrompt { ids: [subject.to_vec(), vec![70, 71]].concat(), subject_last: 2 });
    let tb = TargetBatch { prompts, target: vec![t1], prompt_lens };
    Ok(Edit { plain, contexts, tb, t1, before })
}

#[test]
fn rome_makes_the_target_the_top_prediction() {
    for_each_gpu(|gpu| {
        // A wide MLP: a random key's overlap with another in the C0⁻¹ metric, which is what an
        // edit leaks into unrelated prompts, shrinks like 1/√ffn (SmolLM2 has 1536).
        let w = random_weights(&Config { ffn_hidden: 640, ..Config::tiny_llama() }, 31);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let layer = 0;
        let cov = covariance(&gm, layer, 5)?;
        let Edit { plain, contexts, tb, t1, before } = edit_of(&gm)?;

        let unrelated = vec![vec![5u32, 6, 9, 12], vec![80, 81, 82, 83, 84, 2]];
        let unrelated_before = ok(gm.last_logits(&unrelated))?;
        let unseen = [vec![33, 1], plain.ids.clone()].concat();
        let unseen_before = ok(gm.last_logits(std::slice::from_ref(&unseen)))?.remove(0);
        let (dw, report) = ok(rome_update_ids(&gm, &contexts, &plain, &tb, &hparams(layer), &cov, None, |_| {}))?;
        ok(apply_update(&gm, layer, &dw))?;

        // The plain prompt, a context seen in the optimisation, and one never seen.
        let after = ok(gm.last_logits(&[plain.ids.clone(), [vec![7, 8, 9], plain.ids.clone()].concat(), unseen]))?;
        let last = report.target.history.last().unwrap();
        if after[..2].iter().any(|a| argmax(a) != t1) {
            return Err(format!(
                "after the edit: top {} / {} / {} (want {t1}); final NLL {:.3}, steps {}",
                argmax(&after[0]),
                argmax(&after[1]),
                argmax(&after[2]),
                last.nll,
                report.target.history.len()
            ));
        }
        // A context never seen in the optimisation moves towards the target (a random model
        // generalises less than a trained one, so not necessarily to the top).
        let p = |logits: &[f32]| revive::model::generate::log_softmax(logits)[t1 as usize];
        if p(&after[2]) < p(&unseen_before) + 0.1 {
            return Err(format!("an unseen context: log p(target) {} → {}", p(&unseen_before), p(&after[2])));
        }
        let unrelated_after = ok(gm.last_logits(&unrelated))?;
        for (b, a) in unrelated_before.iter().zip(&unrelated_after) {
            let moved = b.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let edited = before.iter().zip(&after[0]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            // The leak scales like 1/√ffn and with ‖δ‖, which a random model needs large: measured
            // 0.12 and 0.20 of the edit here (ffn = 640), 0.09 at ffn = 1536. The top token of a
            // random model has margins of hundredths, so it is not compared; SmolLM2's test checks
            // that known facts survive.
            if moved > 0.25 * edited || moved > 0.4 * scale {
                return Err(format!(
                    "an unrelated prompt moved: max |Δlogit| {moved} (edited prompt: {edited}, logit scale {scale}), top {} → {}",
                    argmax(b),
                    argmax(a)
                ));
            }
        }
        Ok(())
    });
}

/// Targets through the guard: δ has no part in the protected output directions, and the
/// filtered update (its denominator uᵀ(I − V_kV_kᵀ)k_p) still maps the prompt's key to exactly
/// h + δ, so the edit takes; the plain target's filtered update falls short of its δ.
#[test]
fn rome_through_the_guard_reaches_its_target_after_the_filter() {
    use revive::edit::guard::{RankRule, SpectralGuard};
    for_each_gpu(|gpu| {
        let w = random_weights(&Config { ffn_hidden: 640, ..Config::tiny_llama() }, 31);
        let layer = 0;
        let name = revive::model::names::down_name(layer);
        for through in [false, true] {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let cov = covariance(&gm, layer, 5)?;
            let guard = ok(SpectralGuard::compute(gpu, ok(gm.tensor(&name))?, &name, RankRule::Rank(12), &Default::default()))?;
            let reach = ok(guard.reach(gpu))?;
            let Edit { plain, contexts, tb, t1, .. } = edit_of(&gm)?;
            let (dw, report) = ok(rome_update_ids(&gm, &contexts, &plain, &tb, &hparams(layer), &cov, through.then_some(&reach), |_| {}))?;
            let (safe, _) = ok(guard.filter_delta(gpu, &dw))?;
            // What the filtered update adds at the plain prompt's key, against δ.
            let kp = ok(revive::edit::keys::subject_keys(&gm, std::slice::from_ref(&plain), layer))?.remove(0);
            let dense = ok(gpu.download(&ok(safe.dense(gpu))?))?;
            let delta = &report.target.delta;
            let effect: Vec<f64> = dense.chunks(kp.len()).map(|row| row.iter().zip(&kp).map(|(a, b)| *a as f64 * *b as f64).sum()).collect();
            let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
            let miss = norm(&mut effect.iter().zip(delta).map(|(e, d)| e - *d as f64)) / norm(&mut delta.iter().map(|&d| d as f64));
            let mut protected: Vec<f64> = delta.iter().map(|&d| d as f64).collect();
            reach.left.project(&mut protected);
            let outside = norm(&mut protected.iter().zip(delta).map(|(p, d)| *d as f64 - p)) / norm(&mut delta.iter().map(|&d| d as f64));
            if through {
                let s = report.key_reach.ok_or("no key reach reported")?;
                if !(miss < 1e-4 && outside < 1e-5 && s > 0.0 && s < 1.0) {
                    return Err(format!("through the guard: the filtered update misses δ by {miss:.2e}, δ has {outside:.2e} in the protected directions, key reach {s}"));
                }
                ok(safe.add_to(gpu, ok(gm.tensor(&name))?))?;
                let after = ok(gm.last_logits(std::slice::from_ref(&plain.ids)))?.remove(0);
                if argmax(&after) != t1 {
                    return Err(format!("through the guard, the filtered edit gives {} (want {t1})", argmax(&after)));
                }
            } else if !(miss > 0.05 && outside > 0.05 && report.key_reach.is_none()) {
                return Err(format!("plain target: the filtered update misses δ by only {miss:.2e}, δ has {outside:.2e} in the protected directions"));
            }
        }
        Ok(())
    });
}
