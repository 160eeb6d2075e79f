//! The gradient of a loss with respect to a vector δ added to the residual stream, through every
//! layer above, on the GPU, against central finite differences of the f64 oracle's loss, on tiny
//! random models of both families and batches of prompts of different lengths.

mod common;
use common::*;
use revive::gpu::SplitLimits;
use revive::cpu::model::CpuModel;
use revive::model::backward::{DeltaPass, Term};
use revive::model::batch::Batch;
use revive::model::forward::GpuModel;
use revive::model::probe::{Probes, Site};
use revive::model::random::random_weights;
use revive::model::{Config, RopeStyle, Weights};

/// (name, weights, whether the model keeps its q/k/v and gate/up weights stacked).
fn models() -> Vec<(&'static str, Weights, bool)> {
    let mut adjacent = Config::tiny_llama();
    adjacent.rope_style = RopeStyle::Adjacent;
    adjacent.tied_embeddings = true;
    vec![
        ("llama", random_weights(&Config::tiny_llama(), 21), true),
        // The separate products' way back (a model too large to stack).
        ("llama-unstacked", random_weights(&Config::tiny_llama(), 21), false),
        ("llama-adjacent-tied", random_weights(&adjacent, 22), true),
        ("gpt2", random_weights(&Config::tiny_gpt2(), 23), true),
        // Qwen2's q/k/v biases, stacked and apart.
        ("qwen2", random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 24), true),
        ("qwen2-unstacked", random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 24), false),
    ]
}

/// The same loss as DeltaPass, in f64 from the oracle's logits.
fn cpu_loss(cpu: &CpuModel, seqs: &[Vec<u32>], layer: usize, sites: &[(usize, usize)], delta: &[f32], terms: &[Term], t: usize) -> f64 {
    let probes = Probes { add: sites.iter().map(|&(seq, pos)| (Site { layer, seq, pos }, delta.to_vec())).collect(), ..Default::default() };
    let (logits, _) = cpu.forward(seqs, &probes);
    let logp = |row: usize| -> Vec<f64> {
        let z = &logits[row / t][row % t];
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        z.iter().map(|v| v - lse).collect()
    };
    terms
        .iter()
        .map(|term| match term {
            Term::Nll { row, token, weight } => -weight * logp(*row)[*token as usize],
            Term::Kl { row, p_ref, weight } => {
                let lp = logp(*row);
                weight * p_ref.iter().zip(&lp).filter(|(p, _)| **p > 0.0).map(|(p, l)| p * (p.ln() - l)).sum::<f64>()
            }
            Term::KlFrom { row, log_q, weight } => weight * logp(*row).iter().zip(log_q).map(|(l, q)| l.exp() * (l - q)).sum::<f64>(),
        })
        .sum()
}

#[test]
fn delta_gradient_matches_finite_differences() {
    for_each_gpu(|gpu| {
        for (name, w, stacked) in models() {
            let c = &w.config;
            let (d, v) = (c.hidden, c.vocab_size as u32);
            let cpu = CpuModel::new(&w);
            let mut gm = ok(GpuModel::new(gpu, &w))?;
            if !stacked {
                gm.unstack();
            }
            let seqs = vec![vec![5, 17, 3, 60 % v, 2, 9, 33], vec![7, 1, 88 % v], vec![4, 8, 15, 16, 23]];
            let t = 7;
            let sites = [(0, 2), (1, 1), (2, 3)];
            let mut r = rng(7);
            // Multiples of 2⁻¹², so δ ± h is exact in f32 and the oracle sees the intended step.
            let delta: Vec<f32> = random_vec(&mut r, d).iter().map(|x| (x * 0.5 * 4096.0).round() / 4096.0).collect();
            let p_ref: Vec<f64> = {
                let e: Vec<f64> = random_vec(&mut r, c.vocab_size).iter().map(|x| (2.0 * *x as f64).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|x| x / s).collect()
            };
            let terms = vec![
                Term::Nll { row: 4, token: 11, weight: 0.5 },
                // Before sequence 0's δ (at 2): a constant of the loss, and a prefix row where
                // that sequence runs in a group of its own.
                Term::Nll { row: 1, token: 9, weight: 0.7 },
                Term::Nll { row: 6, token: 3, weight: 0.25 },
                Term::Nll { row: t + 2, token: 40 % v, weight: 1.0 },
                Term::Kl { row: 2 * t + 3, p_ref: p_ref.clone(), weight: 0.3 },
                // The published code's direction, on a row another term reads too and one no
                // other term reads.
                Term::KlFrom { row: 2 * t + 3, log_q: p_ref.iter().map(|p| p.ln()).collect(), weight: 0.4 },
                Term::KlFrom { row: t + 1, log_q: p_ref.iter().rev().map(|p| p.ln()).collect(), weight: 0.4 },
            ];
            let tagged: Vec<((usize, usize), usize)> = sites.iter().map(|&s| (s, 0)).collect();
            for layer in 0..c.n_layers {
                // Every length in a group of its own at even layers (the rows of the batch
                // as given mapped into three groups), the whole batch as one at odd layers.
                let overhead = if layer % 2 == 0 { 0 } else { usize::MAX };
                let pass = ok(DeltaPass::grouped(&gm, ok(Batch::new(&seqs))?, layer, &tagged, 1, overhead))?;
                if pass.group_batches().len() != if overhead == 0 { 3 } else { 1 } {
                    return Err(format!("{name} layer {layer}: {} groups at overhead {overhead}", pass.group_batches().len()));
                }
                let got = ok(pass.loss_and_grad(&delta, &terms))?;
                // A pass serves every step of an optimisation: the evaluation at δ must leave no
                // trace in the next one.
                let zero = vec![0.0f32; d];
                let at_zero = ok(pass.loss_and_grad(&zero, &terms))?.loss;
                let want_zero = cpu_loss(&cpu, &seqs, layer, &sites, &zero, &terms, t);
                let want_loss = cpu_loss(&cpu, &seqs, layer, &sites, &delta, &terms, t);
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if !((got.loss - want_loss).abs() <= 1e-4 * want_loss.abs()) || !((at_zero - want_zero).abs() <= 1e-4 * want_zero.abs()) {
                    return Err(format!("{name} layer {layer}: loss {} vs oracle {want_loss}; at δ = 0 {at_zero} vs {want_zero}", got.loss));
                }
                let h = 1.0f32 / 128.0;
                let fd: Vec<f64> = (0..d)
                    .map(|i| {
                        let (mut up, mut dn) = (delta.clone(), delta.clone());
                        up[i] += h;
                        dn[i] -= h;
                        (cpu_loss(&cpu, &seqs, layer, &sites, &up, &terms, t) - cpu_loss(&cpu, &seqs, layer, &sites, &dn, &terms, t)) / (2.0 * h as f64)
                    })
                    .collect();
                let diff: f64 = got.grad.iter().zip(&fd).map(|(g, f)| (*g as f64 - f).powi(2)).sum::<f64>().sqrt();
                let norm: f64 = fd.iter().map(|f| f * f).sum::<f64>().sqrt();
                // Negated on purpose: a NaN must fail.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if !(diff <= 1e-3 * norm) || norm == 0.0 {
                    return Err(format!("{name} layer {layer}: ‖grad − fd‖/‖fd‖ = {:e} (‖fd‖ = {norm:e})", diff / norm));
                }
            }
        }
        Ok(())
    });
}

/// Several δ over sequences of many lengths: the pass run in one group per length, in a few
/// groups and as one padded batch gives the same loss, terms and gradients (to f32 rounding:
/// the products see other row counts), and the groups hold no padding beyond their longest.
#[test]
fn grouped_delta_pass_equals_one_padded_batch() {
    for_each_gpu(|gpu| {
        let w = random_weights(&Config::tiny_llama(), 31);
        let c = &w.config;
        let (d, v) = (c.hidden, c.vocab_size as u32);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let mut r = rng(32);
        let lens = [9usize, 2, 5, 9, 3, 11, 1, 6, 5, 13, 4];
        let seqs: Vec<Vec<u32>> = lens.iter().enumerate().map(|(s, &l)| (0..l).map(|p| ((s * 31 + p * 7 + 3) as u32) % v).collect()).collect();
        let t = 13;
        // Three δ, each at sites in sequences of different lengths (so in different groups).
        let n = 3;
        let sites: Vec<((usize, usize), usize)> = (0..seqs.len()).map(|s| ((s, (s * 5) % lens[s]), s % n)).collect();
        let terms: Vec<Term> = (0..seqs.len())
            .map(|s| Term::Nll { row: s * t + lens[s] - 1, token: (s as u32 * 13 + 1) % v, weight: 0.1 + s as f64 / 10.0 })
            .chain([Term::Kl { row: 5 * t + 7, p_ref: vec![1.0 / c.vocab_size as f64; c.vocab_size], weight: 0.5 }])
            .collect();
        let delta: Vec<f32> = random_vec(&mut r, n * d).iter().map(|x| x * 0.3).collect();
        let mut runs = vec![];
        for overhead in [0, 4, usize::MAX] {
            let pass = ok(DeltaPass::grouped(&gm, ok(Batch::new(&seqs))?, 1, &sites, n, overhead))?;
            for g in pass.group_batches() {
                if g.lens.iter().min() == Some(&0) || g.ids.len() != g.b() * g.t {
                    return Err(format!("overhead {overhead}: a malformed group {:?}", g.lens));
                }
            }
            runs.push((overhead, pass.group_batches().len(), ok(pass.loss_and_grad(&delta, &terms))?));
        }
        let (_, groups0, ref want) = runs[2];
        // Each sequence runs from its δ to its end: at no cost per group, one group per span.
        let mut spans: Vec<(usize, usize)> = sites.iter().map(|&((s, pos), _)| (pos, lens[s])).collect();
        spans.sort_unstable();
        spans.dedup();
        if groups0 != 1 || runs[0].1 != spans.len() {
            return Err(format!("groups: {} at overhead 0 ({} distinct spans), {groups0} as one batch", runs[0].1, spans.len()));
        }
        for (overhead, groups, got) in &runs[..2] {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
            let gdiff: f64 = got.grad.iter().zip(&want.grad).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
            let gnorm: f64 = want.grad.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !close(got.loss, want.loss) || got.terms.iter().zip(&want.terms).any(|(a, b)| !close(*a, *b)) || !(gdiff <= 1e-5 * gnorm) || gnorm == 0.0 || got.rows != want.rows {
                return Err(format!("{groups} groups (overhead {overhead}): loss {} vs {}, ‖Δgrad‖/‖grad‖ {:e}", got.loss, want.loss, gdiff / gnorm));
            }
        }
        Ok(())
    });
}

#[test]
fn delta_pass_rejects_bad_input() {
    for_each_gpu(|gpu| {
        let w = random_weights(&Config::tiny_llama(), 3);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let batch = || Batch::new(&[vec![1, 2, 3]]).unwrap();
        if DeltaPass::new(&gm, batch(), 1, &[(0, 3)]).is_ok() {
            return Err("a site past the sequence was accepted".into());
        }
        if DeltaPass::new(&gm, batch(), 9, &[(0, 1)]).is_ok() {
            return Err("a layer past the model was accepted".into());
        }
        if DeltaPass::new(&gm, batch(), 1, &[(0, 1), (0, 1)]).is_ok() {
            return Err("a site given the same δ twice was accepted".into());
        }
        let pass = ok(DeltaPass::new(&gm, batch(), 0, &[(0, 1)]))?;
        let d = w.config.hidden;
        let nll = [Term::Nll { row: 2, token: 5, weight: 1.0 }];
        let kl_from = |weight: f64| Term::KlFrom { row: 2, log_q: vec![-(w.config.vocab_size as f64).ln(); w.config.vocab_size], weight };
        let checks: Vec<(&str, revive::Result<_>)> = vec![
            ("a short δ", pass.loss_and_grad(&vec![0.0; d - 1], &nll)),
            ("a NaN in δ", pass.loss_and_grad(&[vec![0.0; d - 1], vec![f32::NAN]].concat(), &nll)),
            ("a row outside the batch", pass.loss_and_grad(&vec![0.0; d], &[Term::Nll { row: 3, token: 5, weight: 1.0 }])),
            ("a token outside the vocabulary", pass.loss_and_grad(&vec![0.0; d], &[Term::Nll { row: 2, token: 500, weight: 1.0 }])),
            ("no terms", pass.loss_and_grad(&vec![0.0; d], &[])),
            ("a KL-from-reference term before another term", pass.loss_and_grad(&vec![0.0; d], &[kl_from(0.5), nll[0].clone()])),
            ("KL-from-reference terms of two weights", pass.loss_and_grad(&vec![0.0; d], &[nll[0].clone(), kl_from(0.5), kl_from(0.25)])),
            ("a short KL reference", pass.loss_and_grad(&vec![0.0; d], &[Term::KlFrom { row: 2, log_q: vec![0.0; 3], weight: 1.0 }])),
        ];
        let ragged = ok(DeltaPass::new(&gm, ok(Batch::new(&[vec![1, 2, 3], vec![4]]))?, 0, &[(0, 1)]))?;
        let padding = ragged.loss_and_grad(&vec![0.0; d], &[Term::Nll { row: 4, token: 5, weight: 1.0 }]);
        let checks = checks.into_iter().chain([("a padding row", padding)]);
        for (what, r) in checks {
            if r.is_ok() {
                return Err(format!("{what} was accepted"));
            }
        }
        Ok(())
    });
}

/// An Adam step of the targets on a Llama model: each upper layer costs 19 dispatches with the
/// stacked q/k/v and gate/up products (9 forward with the tape, 10 back) and 26 with separate
/// ones. Counted as the difference between passes edited one layer apart, so that what runs
/// once per step (the head, the loss, δ's sites) drops out.
#[test]
fn an_adam_step_takes_19_dispatches_per_upper_layer() {
    // Counts dispatches: a device of its own, which no other test of this binary uses.
    for_each_fresh_gpu(false, |gpu| {
        let w = random_weights(&Config::tiny_llama(), 41);
        let d = w.config.hidden;
        for (stacked, want) in [(true, 19), (false, 26)] {
            let mut gm = ok(GpuModel::new(gpu, &w))?;
            if !stacked {
                gm.unstack();
            }
            let step = |layer: usize| -> Result<u64, String> {
                // One group (else each group's layers count apart).
                let sites = [((0, 2), 0), ((1, 1), 0)];
                let pass = ok(DeltaPass::grouped(&gm, ok(Batch::new(&[vec![3, 1, 4, 1, 5], vec![9, 2, 6]]))?, layer, &sites, 1, usize::MAX))?;
                let terms = [Term::Nll { row: 4, token: 7, weight: 1.0 }, Term::Nll { row: 7, token: 2, weight: 0.5 }];
                let prepared = ok(pass.prepare_terms(&terms))?;
                let before = gpu.runtime_stats();
                ok(pass.loss_and_grad_with(&vec![0.01; d], &prepared))?;
                Ok((gpu.runtime_stats() - before).dispatches)
            };
            let per_layer = step(0)? as i64 - step(1)? as i64;
            if per_layer != want {
                return Err(format!("stacked {stacked}: {per_layer} dispatches per upper layer, want {want}"));
            }
        }
        Ok(())
    });
}

/// The stacked products' way back, with and without the norms folded into the products, gives
/// the separate products' loss and gradient (to f32 rounding) at every edited layer, in one
/// group and in a group per span, with grouped-query heads, both rotation pairings and binding
/// limits small enough to split every kernel.
#[test]
fn stacked_and_separate_products_give_the_same_gradient() {
    for_each_gpu(|gpu| {
        let mut gqa = Config::tiny_llama();
        (gqa.n_heads, gqa.n_kv_heads, gqa.head_dim, gqa.ffn_hidden, gqa.rope_style) = (3, 1, 12, 40, RopeStyle::Adjacent);
        for (ci, c) in [Config::tiny_llama(), gqa].iter().enumerate() {
            let w = random_weights(c, 100 + ci as u64);
            let (d, v) = (c.hidden, c.vocab_size as u32);
            let seqs = vec![vec![5, 17, 3, 60 % v, 2, 9, 33, 4, 8], vec![7, 1, 88 % v], vec![4, 8, 15, 16, 23]];
            let sites = [((0, 2), 0), ((1, 1), 0), ((2, 3), 0)];
            // One term at a site, which alone depends on δ at the last layer.
            let terms = [Term::Nll { row: 4, token: 11, weight: 0.5 }, Term::Nll { row: 8, token: 3, weight: 0.25 }, Term::Nll { row: 11, token: 40 % v, weight: 1.0 }, Term::Nll { row: 21, token: 41 % v, weight: 1.0 }];
            let delta: Vec<f32> = random_vec(&mut rng(9), d).iter().map(|x| x * 0.5).collect();
            for limits in [None, Some(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 })] {
                let gpu = limits.map_or_else(|| gpu.clone(), |l| gpu.with_split_limits(l));
                let stacked = ok(GpuModel::new(&gpu, &w))?;
                // A hardware adapter's way: the norms folded into the products for groups of a
                // few rows (the 3-token sequence's group here), whatever this adapter's default.
                let mut folded = ok(GpuModel::new(&gpu, &w))?;
                folded.set_fold_into_products(true);
                let mut separate = ok(GpuModel::new(&gpu, &w))?;
                separate.unstack();
                separate.set_fold_into_products(false);
                for layer in 0..c.n_layers {
                    for overhead in [0, usize::MAX] {
                        let run = |gm: &GpuModel| -> Result<_, String> { ok(ok(DeltaPass::grouped(gm, ok(Batch::new(&seqs))?, layer, &sites, 1, overhead))?.loss_and_grad(&delta, &terms)) };
                        let b = run(&separate)?;
                        for (way, gm) in [("stacked", &stacked), ("stacked and folded", &folded)] {
                            let a = run(gm)?;
                            let diff = a.grad.iter().zip(&b.grad).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                            let norm = b.grad.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
                            // Negated on purpose: a NaN must fail.
                            #[allow(clippy::neg_cmp_op_on_partial_ord)]
                            if !(diff <= 1e-5 * norm) || !((a.loss - b.loss).abs() <= 1e-6 * b.loss.abs()) || norm == 0.0 {
                                return Err(format!("{way}, config {ci}, limits {limits:?}, layer {layer}, overhead {overhead}: loss {} vs {}, gradient off by {:e} relative", a.loss, b.loss, diff / norm));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    });
}
