//! Reference row log-softmax, its backward and softmax's backward, in f64.

/// log softmax of one row.
pub fn log_softmax_row(x: &[f64]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
    let lse = x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v - m - lse).collect()
}

/// dx of `log_softmax_row` given its output and dlogp: dlogp − exp(logp) · Σ dlogp.
pub fn log_softmax_bwd_row(logp: &[f64], dlogp: &[f64]) -> Vec<f64> {
    let s: f64 = dlogp.iter().sum();
    logp.iter().zip(dlogp).map(|(l, d)| d - l.exp() * s).collect()
}

/// dx of softmax given its output y and dy: y (dy − Σ y dy).
pub fn softmax_bwd_row(y: &[f64], dy: &[f64]) -> Vec<f64> {
    let s: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    y.iter().zip(dy).map(|(y, d)| y * (d - s)).collect()
}

/// The loss Σ_{t_j>0} t_j (log(t_j / T) − log softmax(x)_j) of one row (T = Σ t: T times
/// KL(t/T ‖ softmax(x))) and its gradient softmax(x) · T − t.
pub fn weighted_nll_row(x: &[f64], t: &[f64]) -> (Vec<f64>, f64) {
    let logp = log_softmax_row(x);
    let total: f64 = t.iter().sum();
    let loss = t.iter().zip(&logp).filter(|(t, _)| **t > 0.0).map(|(t, l)| t * ((t / total).ln() - l)).sum::<f64>();
    (logp.iter().zip(t).map(|(l, t)| l.exp() * total - t).collect(), loss)
}

/// `weighted_nll_row` over the rows of [rows, cols]: the gradients, then each row's loss.
pub fn weighted_nll(x: &[f32], t: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut grad, mut loss) = (vec![], vec![]);
    for (x, t) in x.chunks(cols).zip(t.chunks(cols)) {
        let (g, l) = weighted_nll_row(&f64s(x), &f64s(t));
        grad.extend(g);
        loss.push(l);
    }
    (grad, loss)
}

/// w·KL(p ‖ q) of one row (p = softmax(x), `log_q` the reference's log-probabilities) and its
/// gradient w p (log p − log q − KL).
pub fn kl_from_reference_row(x: &[f64], log_q: &[f64], w: f64) -> (Vec<f64>, f64) {
    let logp = log_softmax_row(x);
    let kl: f64 = logp.iter().zip(log_q).map(|(l, q)| l.exp() * (l - q)).sum();
    (logp.iter().zip(log_q).map(|(l, q)| w * l.exp() * (l - q - kl)).collect(), w * kl)
}

/// `kl_from_reference_row` over the rows of [rows, cols]: the gradients, then each row's loss.
pub fn kl_from_reference(x: &[f32], log_q: &[f32], w: f64, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut grad, mut loss) = (vec![], vec![]);
    for (x, q) in x.chunks(cols).zip(log_q.chunks(cols)) {
        let (g, l) = kl_from_reference_row(&f64s(x), &f64s(q), w);
        grad.extend(g);
        loss.push(l);
    }
    (grad, loss)
}

/// log softmax(x)[token] of each row of [rows, cols].
pub fn token_logprobs(x: &[f32], tokens: &[u32], cols: usize) -> Vec<f64> {
    x.chunks(cols).zip(tokens).map(|(row, &t)| log_softmax_row(&f64s(row))[t as usize]).collect()
}

/// The first index of each row's largest value; None for a row holding a NaN or an infinity.
pub fn row_argmax(x: &[f32], cols: usize) -> Vec<Option<u32>> {
    x.chunks(cols)
        .map(|row| {
            if row.iter().any(|v| !v.is_finite()) {
                return None;
            }
            let mut at = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[at] {
                    at = j;
                }
            }
            Some(at as u32)
        })
        .collect()
}

/// The k largest values of each row with their indices, largest first and the lower index first
/// among equal values (a stable sort of the whole row); None for a row holding a NaN or an
/// infinity.
pub fn row_top_k(x: &[f32], cols: usize, k: usize) -> Vec<Option<Vec<(u32, f32)>>> {
    x.chunks(cols)
        .map(|row| {
            if row.iter().any(|v| !v.is_finite()) {
                return None;
            }
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&i, &j| row[j].partial_cmp(&row[i]).expect("finite"));
            Some(order[..k].iter().map(|&i| (i as u32, row[i])).collect())
        })
        .collect()
}

/// The candidate a sampler draws from a row's candidate values (largest first) in f64: the
/// softmax of the first k (at most all) at the temperature, the first whose running weight
/// passes u · Σ weights (the last where rounding leaves u · Σ past them all); the first
/// candidate where the temperature is not a positive finite number. With it, how far u · Σ lies
/// from the nearest boundary between two candidates, as a fraction of Σ (infinite for greedy
/// or one candidate): a draw in f32 may fall on the other side within its rounding. (The
/// host's sampler rounds (v − m) / t to f32 before its f64 exponentials, the GPU's works in f32
/// throughout; both stay within that margin of this.)
pub fn sample_top_k(values: &[f32], temperature: f32, k: usize, u: f64) -> (usize, f64) {
    let k = k.min(values.len());
    if !(temperature > 0.0 && temperature.is_finite()) || k <= 1 {
        return (0, f64::INFINITY);
    }
    let m = values[..k].iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    let w: Vec<f64> = values[..k].iter().map(|&v| ((v as f64 - m) / temperature as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let target = u * total;
    let mut boundary = 0.0;
    let mut chosen = None;
    let mut margin = f64::INFINITY;
    for (j, wj) in w.iter().enumerate() {
        boundary += wj;
        if j + 1 < k {
            margin = margin.min((target - boundary).abs() / total);
        }
        if chosen.is_none() && target < boundary {
            chosen = Some(j);
        }
    }
    (chosen.unwrap_or(k - 1), margin)
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn log_softmax_rows(x: &[f32], cols: usize) -> Vec<f64> {
    x.chunks(cols).flat_map(|r| log_softmax_row(&f64s(r))).collect()
}

pub fn log_softmax_bwd(logp: &[f32], dlogp: &[f32], cols: usize) -> Vec<f64> {
    logp.chunks(cols).zip(dlogp.chunks(cols)).flat_map(|(l, d)| log_softmax_bwd_row(&f64s(l), &f64s(d))).collect()
}

pub fn softmax_bwd(y: &[f32], dy: &[f32], cols: usize) -> Vec<f64> {
    y.chunks(cols).zip(dy.chunks(cols)).flat_map(|(y, d)| softmax_bwd_row(&f64s(y), &f64s(d))).collect()
}
