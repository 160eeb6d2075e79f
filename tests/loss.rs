//! Row log-softmax, its backward and softmax's backward on every adapter against the f64
//! oracle; cross-entropy and KL gradients built from them; the oracle against central
//! differences of the f64 forward.

mod common;
use common::*;
use revive::cpu;
use revive::cpu::loss::{log_softmax_bwd_row, log_softmax_row, softmax_bwd_row};
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::loss::{kl_from_reference, log_softmax_bwd, log_softmax_rows, row_argmax, row_top_k, sample_top_k, token_logprobs, weighted_nll};
use revive::ops::softmax::{softmax_bwd, softmax_rows};

/// Includes a vocabulary-wide row (49152) and one of 4099 (> 4096, not a multiple of 256).
const SHAPES: &[&[usize]] = &[&[1, 1], &[1, 7], &[7, 1], &[13, 257], &[3, 4099], &[500, 3], &[2, 49152]];

/// Long rows sum up to 49152 f32 terms (192 per thread, then a tree), yet log-sum-exp and
/// Σ dlogp stay within the forward ops' 1e-5 relative; logp ~ −11 there, so rtol dominates.
fn tol(_cols: usize) -> Tolerance {
    Tolerance::F32
}

fn logits(seed: u64, n: usize) -> Vec<f32> {
    random_vec(&mut rng(seed), n).into_iter().map(|v| 6.0 * v).collect()
}

fn check(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<(), String> {
    let cols = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let x = logits(seed, n);
    let dl = random_vec(&mut rng(seed + 1), n);
    let (tx, tdl) = (ok(gpu.upload(&x, shape))?, ok(gpu.upload(&dl, shape))?);
    let tlogp = ok(log_softmax_rows(gpu, &tx))?;
    let logp = ok(gpu.download(&tlogp))?;
    compare(&format!("log_softmax_rows {shape:?}"), &logp, &cpu::log_softmax_rows(&x, cols), tol(cols))?;
    let got = ok(gpu.download(&ok(log_softmax_bwd(gpu, &tlogp, &tdl))?))?;
    compare(&format!("log_softmax_bwd {shape:?}"), &got, &cpu::log_softmax_bwd(&logp, &dl, cols), tol(cols))?;
    let ty = ok(softmax_rows(gpu, &tx))?;
    let y = ok(gpu.download(&ty))?;
    let got = ok(gpu.download(&ok(softmax_bwd(gpu, &ty, &tdl))?))?;
    compare(&format!("softmax_bwd {shape:?}"), &got, &cpu::softmax_bwd(&y, &dl, cols), tol(cols))?;

    // Cross-entropy: dlogits = softmax(x) − onehot(target); KL(p_orig ‖ p): p − p_orig.
    let rows = n / cols;
    let targets: Vec<usize> = (0..rows).map(|r| (r * 7919 + 3) % cols).collect();
    let mut onehot = vec![0.0f32; n];
    for (r, &t) in targets.iter().enumerate() {
        onehot[r * cols + t] = 1.0;
    }
    let p_orig: Vec<f32> = cpu::softmax_rows(&logits(seed + 2, n), cols).into_iter().map(|v| v as f32).collect();
    let p_want = cpu::softmax_rows(&x, cols);
    for (name, target) in [("cross-entropy", &onehot), ("kl", &p_orig)] {
        let neg: Vec<f32> = target.iter().map(|v| -v).collect();
        let got = ok(gpu.download(&ok(log_softmax_bwd(gpu, &tlogp, &ok(gpu.upload(&neg, shape))?))?))?;
        let want: Vec<f64> = p_want.iter().zip(target.iter()).map(|(p, t)| p - *t as f64).collect();
        compare(&format!("{name} gradient {shape:?}"), &got, &want, tol(cols))?;
    }

    // The fused loss: one-hot rows of weight 0.7, KL rows of weight 0.3, rows with no weight.
    let weights: Vec<f32> = (0..n)
        .map(|i| match (i / cols) % 3 {
            0 => 0.7 * onehot[i],
            1 => 0.3 * p_orig[i],
            _ => 0.0,
        })
        .collect();
    let (grad, loss) = ok(weighted_nll(gpu, &tx, &ok(gpu.upload(&weights, shape))?))?;
    let (want_grad, want_loss) = cpu::loss::weighted_nll(&x, &weights, cols);
    compare(&format!("weighted_nll gradient {shape:?}"), &ok(gpu.download(&grad))?, &want_grad, tol(cols))?;
    compare(&format!("weighted_nll loss {shape:?}"), &ok(gpu.download(&loss))?, &want_loss, tol(cols))?;

    // KL(p ‖ q) from reference log-probabilities, weight 0.3.
    let log_q: Vec<f32> = cpu::log_softmax_rows(&logits(seed + 3, n), cols).into_iter().map(|v| v as f32).collect();
    let (grad, loss) = ok(kl_from_reference(gpu, &tx, &ok(gpu.upload(&log_q, shape))?, 0.3))?;
    let (want_grad, want_loss) = cpu::loss::kl_from_reference(&x, &log_q, 0.3, cols);
    compare(&format!("kl_from_reference gradient {shape:?}"), &ok(gpu.download(&grad))?, &want_grad, tol(cols))?;
    compare(&format!("kl_from_reference loss {shape:?}"), &ok(gpu.download(&loss))?, &want_loss, tol(cols))?;

    let got = ok(gpu.download(&ok(token_logprobs(gpu, &tx, &targets.iter().map(|&t| t as u32).collect::<Vec<_>>()))?))?;
    compare(&format!("token_logprobs {shape:?}"), &got, &cpu::loss::token_logprobs(&x, &targets.iter().map(|&t| t as u32).collect::<Vec<_>>(), cols), tol(cols))?;
    check_argmax(gpu, &x, shape)?;
    for k in [1, 2, 5, 37, cols] {
        if k <= cols && k <= 300 {
            check_top_k(gpu, &x, shape, k)?;
        }
    }
    Ok(())
}

/// row_top_k against the oracle, exactly: indices and values are copied, never computed.
fn check_top_k(gpu: &Gpu, x: &[f32], shape: &[usize], k: usize) -> Result<(), String> {
    let cols = *shape.last().unwrap();
    let top = ok(gpu.download(&ok(row_top_k(gpu, &ok(gpu.upload(x, shape))?, k))?))?;
    let (indices, values) = top.split_at(top.len() / 2);
    let want = cpu::loss::row_top_k(x, cols, k);
    if indices.len() != want.len() * k || values.len() != indices.len() {
        return Err(format!("row_top_k {shape:?} k {k}: {} indices and {} values for {} rows", indices.len(), values.len(), want.len()));
    }
    for (r, w) in want.iter().enumerate() {
        let (gi, gv) = (&indices[r * k..(r + 1) * k], &values[r * k..(r + 1) * k]);
        let same = match w {
            Some(w) => w.iter().zip(gi.iter().zip(gv)).all(|(&(wi, wv), (&i, &v))| i == wi as f32 && v.to_bits() == wv.to_bits()),
            None => gi.iter().chain(gv).all(|v| v.is_nan()),
        };
        if !same {
            return Err(format!("row_top_k {shape:?} k {k}: row {r} gave {:?}, the oracle {w:?}", gi.iter().zip(gv).collect::<Vec<_>>()));
        }
    }
    Ok(())
}

/// row_argmax against the oracle, exactly: an index is right or wrong.
fn check_argmax(gpu: &Gpu, x: &[f32], shape: &[usize]) -> Result<(), String> {
    let cols = *shape.last().unwrap();
    let got = ok(gpu.download(&ok(row_argmax(gpu, &ok(gpu.upload(x, shape))?))?))?;
    let want = cpu::loss::row_argmax(x, cols);
    if got.len() != want.len() {
        return Err(format!("row_argmax {shape:?}: {} results for {} rows", got.len(), want.len()));
    }
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        let same = match w {
            Some(w) => *g == *w as f32,
            None => g.is_nan(),
        };
        if !same {
            return Err(format!("row_argmax {shape:?}: row {r} gave {g}, the oracle {w:?}"));
        }
    }
    Ok(())
}

/// Equal maxima: the first index wins, as in torch.argmax, whichever thread holds it (the
/// kernel strides rows by 256) — in one thread's stride, in a lower thread after a higher one,
/// and all equal.
#[test]
fn row_argmax_takes_the_first_of_equal_maxima() {
    for_each_gpu(|gpu| {
        let cols = 1000;
        let mut x = logits(4500, 4 * cols);
        for (r, at) in [[5usize, 261], [260, 513], [999, 700]].iter().enumerate() {
            for &j in at {
                x[r * cols + j] = 100.0;
            }
        }
        x[3 * cols..].iter_mut().for_each(|v| *v = -2.5);
        check_argmax(gpu, &x, &[4, cols])?;
        let got = ok(gpu.download(&ok(row_argmax(gpu, &ok(gpu.upload(&x, &[4, cols]))?))?))?;
        if got != [5.0, 260.0, 700.0, 0.0] {
            return Err(format!("row_argmax of rows with equal maxima: {got:?}"));
        }
        Ok(())
    });
}

/// Rows of few distinct values (ties everywhere, across threads and strides), k crossing the
/// groups of equal values; a row with a NaN and one with an infinity come back all NaN; k
/// outside 1..=cols is refused.
#[test]
fn row_top_k_orders_ties_by_index_and_flags_bad_rows() {
    for_each_gpu(|gpu| {
        let cols = 1000;
        let mut x: Vec<f32> = logits(4600, 5 * cols).into_iter().map(|v| (v / 3.0).round()).collect();
        x[3 * cols + 517] = f32::NAN;
        x[4 * cols + 3] = f32::NEG_INFINITY;
        for k in [1, 7, 64, 333] {
            check_top_k(gpu, &x, &[5, cols], k)?;
        }
        // Negative zero equals zero: the lower index first, whatever the sign.
        let z = [0.0f32, -0.0, 0.0, -1.0, -0.0];
        check_top_k(gpu, &z, &[1, 5], 5)?;
        let t = ok(gpu.upload(&z, &[1, 5]))?;
        for k in [0, 6] {
            if row_top_k(gpu, &t, k).is_ok() {
                return Err(format!("row_top_k accepted k = {k} for rows of 5"));
            }
        }
        Ok(())
    });
}

/// Long scans: the top 40 of a row of 300,000 values (1,172 strides of 256 a pick, 46,880
/// iterations of the scan's loop per thread, near the 65,535 a software adapter runs) against
/// the oracle; the top 64 there would pass that limit and is refused on a software adapter
/// (whose invocation would stop without writing), taken on a GPU.
#[test]
fn row_top_k_scans_long_rows_within_the_adapters_loop_limit() {
    for_each_gpu(|gpu| {
        let cols = 300_000;
        let x = logits(4700, cols);
        check_top_k(gpu, &x, &[1, cols], 40)?;
        let t = ok(gpu.upload(&x, &[1, cols]))?;
        match (row_top_k(gpu, &t, 64), gpu.is_cpu()) {
            (Err(e), true) if e.to_string().contains("iterations") => Ok(()),
            (Ok(_), false) => check_top_k(gpu, &x, &[1, cols], 64),
            (got, cpu) => Err(format!("the top 64 of {cols} on an adapter with is_cpu {cpu}: {:?}", got.map(|_| ()))),
        }
    });
}

/// sample_top_k against the f64 oracle, on row_top_k's candidates of random logits: 1, 3, 7,
/// 64 and 67 rows (two workgroups), k 1, 2, 5, 13 and 64, each row with its own temperature
/// (greedy ones among them: 0, negative, NaN, infinite) and k (past the candidates found too),
/// the draws read from a row past the table's first. The same candidate wherever the draw
/// lies beyond f32 rounding of a boundary; a sampling row of NaN candidates draws NaN; most
/// draws pick a candidate other than the first, so a kernel that ignored the draw would fail;
/// a draw exactly on a boundary takes the candidate after it, as the host's does.
#[test]
fn sample_top_k_draws_what_the_oracle_draws() {
    for_each_gpu(|gpu| {
        let temperatures = [1.0f32, 0.0, 0.7, -1.0, 2.5, f32::NAN, 0.3, f32::INFINITY, 1.3];
        let (mut drawn, mut past_first) = (0, 0);
        for (rows, k, seed) in [(1usize, 1usize, 1u64), (3, 2, 2), (7, 5, 3), (64, 13, 4), (67, 64, 5)] {
            let cols = 301;
            let mut x = logits(4800 + seed, rows * cols);
            // Row 2 samples (temperature 0.7 from k + 3 candidates).
            if rows >= 3 {
                x[2 * cols + 17] = f32::NAN;
            }
            let cand = ok(row_top_k(gpu, &ok(gpu.upload(&x, &[rows, cols]))?, k))?;
            let host = ok(gpu.download(&cand))?;
            let (indices, values) = host.split_at(rows * k);
            let first = 2;
            let mut r = rng(4900 + seed);
            let mut table = vec![f32::NAN; first * 3];
            let mut settings = vec![];
            for row in 0..rows {
                let t = temperatures[row % temperatures.len()];
                let ki = [k, 1, k + 3, (k / 2).max(1)][row % 4];
                let u = (random_vec(&mut r, 1)[0] as f64 + 1.0) / 2.0;
                table.extend([t, ki as f32, u as f32]);
                settings.push((t, ki, u as f32 as f64));
            }
            let got = ok(gpu.download(&ok(sample_top_k(gpu, &cand, &ok(gpu.upload(&table, &[table.len()]))?, first))?))?;
            if got.len() != rows {
                return Err(format!("sample_top_k {rows}×{k}: {} results", got.len()));
            }
            for (row, &(t, ki, u)) in settings.iter().enumerate() {
                let vals = &values[row * k..(row + 1) * k];
                if vals.iter().any(|v| !v.is_finite()) {
                    if !got[row].is_nan() {
                        return Err(format!("sample_top_k {rows}×{k}: row {row} of NaN candidates drew {}", got[row]));
                    }
                    continue;
                }
                let (j, margin) = cpu::loss::sample_top_k(vals, t, ki, u);
                let want = indices[row * k + j];
                if got[row] != want && margin > 1e-5 {
                    return Err(format!("sample_top_k {rows}×{k}: row {row} (temperature {t}, k {ki}, u {u}) drew {}, the oracle {want} (candidate {j}, {margin:.2e} from a boundary)", got[row]));
                }
                if t > 0.0 && t.is_finite() && ki.min(k) > 1 {
                    drawn += 1;
                    past_first += usize::from(j > 0);
                }
            }
        }
        if past_first * 3 < drawn {
            return Err(format!("only {past_first} of {drawn} draws past the first candidate: the test does not exercise the draw"));
        }
        // A draw exactly on a boundary: two equal weights and u = ½ put u · Σ on the first
        // one's end, which belongs to the second candidate (the host's `<`, not `<=`).
        let tie = ok(row_top_k(gpu, &ok(gpu.upload(&[3.0, 0.0, 3.0], &[1, 3]))?, 3))?;
        let got = ok(gpu.download(&ok(sample_top_k(gpu, &tie, &ok(gpu.upload(&[1.0, 2.0, 0.5], &[3]))?, 0))?))?;
        if got != [2.0] || cpu::loss::sample_top_k(&[3.0, 3.0, 0.0], 1.0, 2, 0.5).0 != 1 {
            return Err(format!("a draw on the boundary between tokens 0 and 2 gave {got:?}, want [2.0]"));
        }
        let cand = ok(row_top_k(gpu, &ok(gpu.upload(&[1.0, 2.0, 3.0], &[1, 3]))?, 2))?;
        for (draws, first) in [(2, 0), (5, 1)] {
            if sample_top_k(gpu, &cand, &ok(gpu.full(&[draws], 0.5))?, first).is_ok() {
                return Err(format!("sample_top_k took a row's draws from {draws} values at row {first}"));
            }
        }
        if sample_top_k(gpu, &ok(gpu.upload(&[1.0, 2.0, 3.0], &[3]))?, &ok(gpu.full(&[3], 0.5))?, 0).is_ok() {
            return Err("sample_top_k took candidates that are not [2, rows, k]".into());
        }
        Ok(())
    });
}

#[test]
fn loss_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, shape) in SHAPES.iter().enumerate() {
            check(gpu, shape, 4100 + 10 * i as u64)?;
        }
        Ok(())
    });
}

#[test]
fn loss_splits_rows_across_dispatches() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check(gpu, &[50, 37], 4200)?;
        check(gpu, &[2, 7, 300], 4210)
    });
}

#[test]
fn loss_oracle_matches_finite_differences() {
    for cols in [1, 5, 31] {
        let x: Vec<f64> = logits(4300 + cols as u64, cols).into_iter().map(f64::from).collect();
        let dl: Vec<f64> = random_vec(&mut rng(4400 + cols as u64), cols).into_iter().map(f64::from).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let g = log_softmax_bwd_row(&log_softmax_row(&x), &dl);
        check_gradient(&format!("log_softmax {cols}"), |x| dot(&log_softmax_row(x), &dl), &x, &g, 64, 1e-5, 1e-6).unwrap();
        let softmax = |x: &[f64]| log_softmax_row(x).iter().map(|l| l.exp()).collect::<Vec<f64>>();
        let g = softmax_bwd_row(&softmax(&x), &dl);
        check_gradient(&format!("softmax {cols}"), |x| dot(&softmax(x), &dl), &x, &g, 64, 1e-5, 1e-6).unwrap();
        // Cross-entropy of target 0 and KL(q ‖ softmax(x)) through log_softmax_bwd.
        let ce = |x: &[f64]| -log_softmax_row(x)[0];
        let mut neg_onehot = vec![0.0; cols];
        neg_onehot[0] = -1.0;
        let g = log_softmax_bwd_row(&log_softmax_row(&x), &neg_onehot);
        check_gradient(&format!("cross-entropy {cols}"), ce, &x, &g, 64, 1e-5, 1e-6).unwrap();
        let q = softmax(&dl);
        let kl = |x: &[f64]| q.iter().zip(log_softmax_row(x)).map(|(q, l)| q * (q.ln() - l)).sum::<f64>();
        let neg_q: Vec<f64> = q.iter().map(|v| -v).collect();
        let g = log_softmax_bwd_row(&log_softmax_row(&x), &neg_q);
        check_gradient(&format!("kl {cols}"), kl, &x, &g, 64, 1e-5, 1e-6).unwrap();
        // KL(softmax(x) ‖ q), the other direction, weighted.
        let log_q: Vec<f64> = q.iter().map(|v| v.ln()).collect();
        let (g, _) = cpu::loss::kl_from_reference_row(&x, &log_q, 0.7);
        let reverse = |x: &[f64]| 0.7 * log_softmax_row(x).iter().zip(&log_q).map(|(l, q)| l.exp() * (l - q)).sum::<f64>();
        check_gradient(&format!("kl from reference {cols}"), reverse, &x, &g, 64, 1e-5, 1e-6).unwrap();
    }
}

/// A logit that is −∞, +∞ or NaN anywhere in a row makes that row's score and loss NaN (which
/// the host refuses), never a finite number: a −∞ would otherwise vanish into the sum.
#[test]
fn a_non_finite_logit_poisons_its_row_only() {
    for_each_gpu(|gpu| {
        for bad in [f32::NEG_INFINITY, f32::INFINITY, f32::NAN] {
            let mut x = logits(4300, 3 * 300);
            x[300 + 17] = bad;
            let t = ok(gpu.upload(&x, &[3, 300]))?;
            let lp = ok(gpu.download(&ok(token_logprobs(gpu, &t, &[1, 2, 3]))?))?;
            let mut w = vec![0.0f32; 900];
            (0..3).for_each(|r| w[r * 300 + 5] = 1.0);
            let (_, loss) = ok(weighted_nll(gpu, &t, &ok(gpu.upload(&w, &[3, 300]))?))?;
            let loss = ok(gpu.download(&loss))?;
            let uniform = ok(gpu.upload(&[-(300f32).ln(); 900], &[3, 300]))?;
            let reverse = ok(gpu.download(&ok(kl_from_reference(gpu, &t, &uniform, 0.5))?.1))?;
            let top = ok(gpu.download(&ok(row_argmax(gpu, &t))?))?;
            for (what, v) in [("token_logprobs", &lp), ("weighted_nll", &loss), ("kl_from_reference", &reverse), ("row_argmax", &top)] {
                if !(v[0].is_finite() && v[1].is_nan() && v[2].is_finite()) {
                    return Err(format!("{what} with a {bad} logit in row 1: {v:?}"));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn loss_rejects_mismatched_shapes() {
    for_each_gpu(|gpu| {
        let a = ok(gpu.upload(&[0.0; 12], &[3, 4]))?;
        let b = ok(gpu.upload(&[0.0; 12], &[4, 3]))?;
        let err = log_softmax_bwd(gpu, &a, &b).err().ok_or("log_softmax_bwd accepted dlogp [4, 3]")?.to_string();
        if !(err.contains("log_softmax_bwd") && err.contains("dlogp")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = softmax_bwd(gpu, &a, &b).err().ok_or("softmax_bwd accepted dy [4, 3]")?.to_string();
        if !(err.contains("softmax_bwd") && err.contains("dy")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = weighted_nll(gpu, &a, &b).err().ok_or("weighted_nll accepted weights [4, 3]")?.to_string();
        if !(err.contains("weighted_nll") && err.contains("weights")) {
            return Err(format!("unexpected message: {err}"));
        }
        for (tokens, what) in [(vec![0, 1], "two tokens for three rows"), (vec![0, 4, 1], "token 4 of rows of 4")] {
            let err = token_logprobs(gpu, &a, &tokens).err().ok_or(format!("token_logprobs accepted {what}"))?.to_string();
            if !err.contains("token_logprob") {
                return Err(format!("unexpected message: {err}"));
            }
        }
        Ok(())
    });
}
