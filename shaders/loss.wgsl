// Row log-softmax and its backward, over the last dimension; one workgroup (256 threads) per
// row, the row looped over in strides of 256 so rows may be as wide as a vocabulary.
//   log_softmax_rows  out = x - max - log(sum(exp(x - max)))          (a = x)
//   log_softmax_bwd   out = dlogp - exp(logp) * sum(dlogp)             (a = logp, b = dlogp)
//   weighted_nll      out = softmax(x) * T - t, row_loss = sum_{t>0} t (log(t / T) - log_softmax(x))
//                     (a = x, b = t ≥ 0, T = sum(t)): T · KL(t / T ‖ p) and its gradient — w times
//                     the cross-entropy for t one-hot of weight w, w KL(p_ref ‖ p) for t = w p_ref
//                     — with no log-softmax stored, each term small where p is near t / T.
//   kl_from_reference out = w p (log p - log q - s), row_loss = w s, s = sum p (log p - log q)
//                     (a = x, b = log q, w = the uniform's weight): w KL(p ‖ q), the direction
//                     ROME's and MEMIT's code optimise (torch's kl_div(log q, log p)), term by
//                     term small where p is near q.
//   token_logprob     out[row] = log_softmax(x)[token]  (a = x, b = each row's token id, as f32)
//   row_top_k         out_fwd[row·k + n] = the index of the row's n-th largest value, as f32, and
//                     out[loss_off + row·k + n] that value (a = x), NaN where the row holds a NaN or an
//                     infinity: teacher-forced predictions (k = 1), a sampler's candidates
//   sample_top_k      out[row] = the index drawn from row_top_k's k candidates of the row (a: the
//                     indices at a_off, the values at loss_off; b at b_off: each row's
//                     (temperature, k, u) with u uniform in [0, 1)): the softmax of its first k
//                     values at the temperature, the first candidate whose running weight passes
//                     u · Σ weights; the first candidate where the temperature is not a positive
//                     finite number (greedy). NaN where the candidates are.
// Binding 2 is the output of log_softmax_rows and row_top_k, and dlogp / t / tokens / the
// sampler's draws (read) in the others.

struct Meta {
    rows: u32, cols: u32, a_off: u32, b_off: u32,
    out_off: u32, loss_off: u32, weight: f32, k: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_fwd: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let total = partial[0];
    // The next call overwrites `partial`: everyone must have read the total first.
    workgroupBarrier();
    return total;
}

fn workgroup_max(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] = max(partial[lid], partial[lid + s]); }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// (max, log Σ exp(x − max)) of the row of a starting at `base`; every thread gets both. With
// `strict`, a row holding a NaN or an infinity gets a NaN log-sum-exp, so that whatever is
// computed from it is NaN and refused by the host: a -inf logit would otherwise vanish into a
// finite score or loss.
fn row_max_lse(base: u32, lid: u32, strict: bool) -> vec2<f32> {
    var m = bitcast<f32>(0xff800000u); // -inf
    var bad = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let v = a[base + j];
        m = max(m, v);
        // Written so that a NaN fails the comparison, whatever max() does with it.
        if (!(abs(v) <= 3.4028235e38)) { bad = 1.0; }
    }
    let row_max = workgroup_max(lid, m);
    let row_bad = workgroup_max(lid, bad);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) { s += exp(a[base + j] - row_max); }
    // The sum is at least 1 (the max's own term), so the log is finite.
    let lse = log(workgroup_sum(lid, s));
    return vec2<f32>(row_max, select(lse, bitcast<f32>(0x7fc00000u), strict && row_bad > 0.0));
}

@compute @workgroup_size(256, 1, 1)
fn log_softmax_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = p.a_off + wg.x * p.cols;
    let base_out = p.out_off + wg.x * p.cols;
    let ml = row_max_lse(base, lid.x, false);
    let row_max = ml.x;
    let lse = ml.y;
    for (var j = lid.x; j < p.cols; j += WG) { out_fwd[base_out + j] = (a[base + j] - row_max) - lse; }
}

@compute @workgroup_size(256, 1, 1)
fn log_softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ba = p.a_off + wg.x * p.cols;
    let bb = p.b_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    var s = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { s += b[bb + j]; }
    let total = workgroup_sum(lid.x, s);
    for (var j = lid.x; j < p.cols; j += WG) { out[bo + j] = b[bb + j] - exp(a[ba + j]) * total; }
}

@compute @workgroup_size(256, 1, 1)
fn weighted_nll(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ba = p.a_off + wg.x * p.cols;
    let bb = p.b_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    let ml = row_max_lse(ba, lid.x, true);
    let row_max = ml.x;
    let lse = ml.y;
    var tw = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) { tw += b[bb + j]; }
    let total = workgroup_sum(lid.x, tw);
    // Term by term, t (log(t/T) − log p): small where p is near t/T, so the sum does not
    // cancel two entropy-sized totals in f32 (cross-entropy minus Σ t log t/T).
    var loss = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) {
        let logp = (a[ba + j] - row_max) - lse;
        let t = b[bb + j];
        out[bo + j] = exp(logp) * total - t;
        if (t > 0.0) { loss += t * (log(t / total) - logp); }
    }
    let row = workgroup_sum(lid.x, loss);
    if (lid.x == 0u) { row_loss[p.loss_off + wg.x] = row; }
}

@compute @workgroup_size(256, 1, 1)
fn kl_from_reference(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ba = p.a_off + wg.x * p.cols;
    let bb = p.b_off + wg.x * p.cols;
    let bo = p.out_off + wg.x * p.cols;
    let ml = row_max_lse(ba, lid.x, true);
    let row_max = ml.x;
    let lse = ml.y;
    var s = 0.0;
    for (var j = lid.x; j < p.cols; j += WG) {
        let logp = (a[ba + j] - row_max) - lse;
        s += exp(logp) * (logp - b[bb + j]);
    }
    let kl = workgroup_sum(lid.x, s);
    for (var j = lid.x; j < p.cols; j += WG) {
        let logp = (a[ba + j] - row_max) - lse;
        out[bo + j] = p.weight * exp(logp) * ((logp - b[bb + j]) - kl);
    }
    if (lid.x == 0u) { row_loss[p.loss_off + wg.x] = p.weight * kl; }
}

@compute @workgroup_size(256, 1, 1)
fn token_logprob(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ba = p.a_off + wg.x * p.cols;
    let ml = row_max_lse(ba, lid.x, true);
    // The host checked every token against the row width.
    let token = u32(b[p.b_off + wg.x]);
    if (lid.x == 0u) { out[p.out_off + wg.x] = (a[ba + token] - ml.x) - ml.y; }
}

var<workgroup> partial_index: array<u32, 256>;

// The k largest values of a row in the order (value descending, lower index first among
// equal values): k = 1 is torch.argmax's answer (the first of equal maxima), so that token
// accuracies match what PyTorch-based tools report even where two logits tie, and a sampler
// that reads the k candidates back draws the same token as one that sorts the whole row.
// Pick n is the best value that comes after pick n − 1 in that order: k scans of the row,
// nothing to sort.
@compute @workgroup_size(256, 1, 1)
fn row_top_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ba = p.a_off + wg.x * p.cols;
    let first = wg.x * p.k;
    var bad = 0.0;
    // Before the first pick, "after the last pick" holds for every finite value.
    var last_v = bitcast<f32>(0x7f800000u); // +inf
    var last_i = 0u;
    for (var n = 0u; n < p.k; n++) {
        var m = bitcast<f32>(0xff800000u); // -inf
        var at = p.cols;
        // j grows, so a strict > keeps each thread's first maximum. A NaN is never picked (it
        // fails every comparison); a row holding one or an infinity is overwritten below.
        for (var j = lid.x; j < p.cols; j += WG) {
            let v = a[ba + j];
            if (!(abs(v) <= 3.4028235e38)) { bad = 1.0; }
            if ((v < last_v || (v == last_v && j > last_i)) && (v > m || at == p.cols)) { m = v; at = j; }
        }
        partial[lid.x] = m;
        partial_index[lid.x] = at;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                let v = partial[lid.x + s];
                let i = partial_index[lid.x + s];
                let mine = partial_index[lid.x];
                // A thread with no candidate left holds index cols and loses to any that has one.
                if (i < p.cols && (mine == p.cols || v > partial[lid.x] || (v == partial[lid.x] && i < mine))) {
                    partial[lid.x] = v;
                    partial_index[lid.x] = i;
                }
            }
            workgroupBarrier();
        }
        last_v = partial[0];
        last_i = partial_index[0];
        if (lid.x == 0u) {
            out_fwd[p.out_off + first + n] = f32(last_i);
            out[p.loss_off + first + n] = last_v;
        }
        // The next pick overwrites `partial`: everyone must have read this one first.
        workgroupBarrier();
    }
    if (workgroup_max(lid.x, bad) > 0.0 && lid.x == 0u) {
        for (var n = 0u; n < p.k; n++) {
            out_fwd[p.out_off + first + n] = bitcast<f32>(0x7fc00000u);
            out[p.loss_off + first + n] = bitcast<f32>(0x7fc00000u);
        }
    }
}

// One thread a row: a decode step's sequences draw their next tokens on the GPU, so the step
// after can be queued before the tokens reach the host. The host draws the same token in f64
// from the candidates it reads back and redoes the step where a rounding made them differ.
@compute @workgroup_size(64, 1, 1)
fn sample_top_k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= p.rows) { return; }
    let setting = p.b_off + row * 3u;
    let temperature = b[setting];
    let k = min(u32(b[setting + 1u]), p.k);
    let u = b[setting + 2u];
    let indices = p.a_off + row * p.k;
    let values = p.loss_off + row * p.k;
    var chosen = 0u;
    if (temperature > 0.0 && temperature <= 3.4028235e38 && k > 1u) {
        var m = a[values];
        for (var j = 1u; j < k; j++) { m = max(m, a[values + j]); }
        var total = 0.0;
        for (var j = 0u; j < k; j++) { total += exp((a[values + j] - m) / temperature); }
        var left = u * total;
        // The weights are computed again rather than kept: k runs to 64, and a private array
        // that long may spill to memory, which costs more than 64 exponentials.
        // Past every weight (u · Σ rounded up to Σ): the last candidate, as the host does.
        chosen = k - 1u;
        for (var j = 0u; j < k; j++) {
            let w = exp((a[values + j] - m) / temperature);
            if (left < w) {
                chosen = j;
                break;
            }
            left -= w;
        }
    }
    out[p.out_off + row] = a[indices + chosen];
}
