//! How sequences become batches: right-padded to the longest (`Batch`), split into passes
//! within a memory budget (`PassBudget`), or into groups of similar length or span whose padding
//! and per-group dispatch cost together are least (`length_groups`, `span_groups`).

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Token ids padded to the longest sequence; `lens` are the real lengths.
pub struct Batch {
    pub ids: Vec<u32>,
    pub lens: Vec<usize>,
    pub t: usize,
}

impl Batch {
    pub fn new(seqs: &[Vec<u32>]) -> Result<Batch> {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if seqs.is_empty() || seqs.iter().any(Vec::is_empty) {
            return Err(Error::shape("forward", "an empty batch or an empty sequence"));
        }
        let ids = seqs.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(0, t - s.len()))).collect();
        Ok(Batch { ids, lens: seqs.iter().map(Vec::len).collect(), t })
    }
    pub fn b(&self) -> usize {
        self.lens.len()
    }
    /// Row of (sequence, position) in [B·T, ·] activations.
    pub fn row(&self, seq: usize, pos: usize) -> usize {
        seq * self.t + pos
    }
    /// Each sequence's last real token.
    pub fn last_rows(&self) -> Vec<usize> {
        self.lens.iter().enumerate().map(|(s, &l)| self.row(s, l - 1)).collect()
    }
}

/// How much one forward pass over many short sequences takes: padded tokens (the activations,
/// about 25 KB a token for SmolLM2) and logit rows (196 KB each at its 49,152-token vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassBudget {
    pub tokens: usize,
    pub logit_rows: usize,
}

impl PassBudget {
    /// The budget for an adapter. A GPU pays per dispatch, so a pass is as large as memory
    /// allows comfortably (4,096 tokens: a whole edit batch's CounterFact prompts in a few
    /// passes, ~300 MB with its logits). A software adapter pays per byte moved, and passes
    /// that stay in the CPU's caches win: on lavapipe, 104 CounterFact prompts (1,280 tokens)
    /// scored in 31 s in passes of 128–256 tokens, 35–37 s in passes of 512–1,024 or one
    /// request at a time, and 49 s in one pass (`docs/results.md`).
    pub fn for_gpu(gpu: &Gpu) -> PassBudget {
        PassBudget { tokens: if gpu.is_cpu() { 256 } else { 4096 }, logit_rows: 1024 }
    }

    /// Splits sequences of lengths `lens`, each needing `rows[i]` logit rows, into passes within
    /// the budget: shortest first, so a pass pads its sequences little. A sequence larger than
    /// the budget gets a pass of its own. Every index appears in exactly one pass.
    pub fn plan(&self, lens: &[usize], rows: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by_key(|&i| (lens[i], i));
        let mut passes: Vec<Vec<usize>> = vec![];
        let (mut longest, mut logit_rows) = (0, 0);
        for i in order {
            let fits = passes.last().is_some_and(|p| {
                (p.len() + 1) * longest.max(lens[i]) <= self.tokens && logit_rows + rows[i] <= self.logit_rows
            });
            if !fits {
                passes.push(vec![]);
                (longest, logit_rows) = (0, 0);
            }
            passes.last_mut().expect("a pass was just pushed").push(i);
            longest = longest.max(lens[i]);
            logit_rows += rows[i];
        }
        passes
    }
}

/// Splits sequences of lengths `lens` into groups of similar length, each to run as a dense
/// batch of its own, minimising the padded tokens of all groups plus `overhead_tokens` for each
/// group (what another batch's dispatches cost, in tokens' worth of work). A pass padded to its
/// longest sequence wastes much when lengths vary: an edit batch's prompts (4–21 tokens, a
/// KL prompt beside each longer rewriting prompt) are more than half padding.
/// Groups come shortest first, each listing its indices in increasing order; every index is
/// in exactly one group. Exact (dynamic programming over the lengths in order), O(n²).
pub fn length_groups(lens: &[usize], overhead_tokens: usize) -> Vec<Vec<usize>> {
    let spans: Vec<(usize, usize)> = lens.iter().map(|&l| (0, l)).collect();
    span_groups(&spans, overhead_tokens)
}

/// A sort key of a (from, len) span.
type SpanKey = fn((usize, usize)) -> (usize, usize);

/// The orders [`span_groups`] splits into runs: by length, by start, by span.
const SPAN_ORDERS: [SpanKey; 3] = [|(f, l)| (l, f), |(f, l)| (f, l), |(f, l)| (l - f.min(l), f)];

/// [`length_groups`] for sequences that each run only positions `from..len` of their
/// `(from, len)` (the rest is computed once elsewhere): a group runs from its smallest `from`
/// to its longest `len` in every sequence, so its cost is its size times that span, plus the
/// overhead. The best split into runs of three orders (by length, as `length_groups`; by
/// start; by span), each exact by dynamic programming, the cheapest kept, the first on ties:
/// with every `from` 0 they coincide and this is `length_groups`. Sequences with the same
/// span are never split apart.
pub fn span_groups(spans: &[(usize, usize)], overhead_tokens: usize) -> Vec<Vec<usize>> {
    let mut best: Option<(usize, Vec<Vec<usize>>)> = None;
    for key in SPAN_ORDERS {
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| (key(spans[i]), i));
        let found = runs_of(spans, &order, overhead_tokens);
        if best.as_ref().is_none_or(|(cost, _)| found.0 < *cost) {
            best = Some(found);
        }
    }
    best.map(|(_, groups)| groups).unwrap_or_default()
}

/// The cheapest split of `order` into runs (see [`span_groups`]): its cost and the runs, each
/// with its indices sorted.
fn runs_of(spans: &[(usize, usize)], order: &[usize], overhead_tokens: usize) -> (usize, Vec<Vec<usize>>) {
    let n = order.len();
    // best[j]: the cheapest split of the first j; cut[j]: where its last run starts.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        best[j] = usize::MAX;
        let (mut from, mut to) = (usize::MAX, 0);
        for i in (0..j).rev() {
            let (f, l) = spans[order[i]];
            from = from.min(f);
            to = to.max(l);
            // Equal spans are never split: a cut between them only adds a group.
            if i > 0 && spans[order[i - 1]] == spans[order[i]] {
                continue;
            }
            let cost = best[i].saturating_add((j - i).saturating_mul(to.saturating_sub(from))).saturating_add(overhead_tokens);
            if cost < best[j] {
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    let mut groups = vec![];
    let mut j = n;
    while j > 0 {
        let mut g = order[cut[j]..j].to_vec();
        g.sort_unstable();
        groups.push(g);
        j = cut[j];
    }
    groups.reverse();
    (best[n], groups)
}

#[cfg(test)]
mod tests {
    use super::{length_groups, span_groups, PassBudget, SPAN_ORDERS};
    use rand::Rng;

    /// Every sequence lands in exactly one pass, a pass of several stays within the budget, and
    /// an oversized sequence goes alone; on random lengths including ones above the budget.
    #[test]
    fn planned_passes_cover_every_sequence_once_within_the_budget() {
        let mut rng = crate::testing::rng(7);
        for case in 0..200 {
            let n = rng.random_range(1..60);
            let budget = PassBudget { tokens: rng.random_range(1..200), logit_rows: rng.random_range(1..40) };
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..80)).collect();
            let rows: Vec<usize> = lens.iter().map(|&l| rng.random_range(1..=l)).collect();
            let passes = budget.plan(&lens, &rows);
            let mut seen = vec![0; n];
            for p in &passes {
                assert!(!p.is_empty(), "case {case}: an empty pass");
                let longest = p.iter().map(|&i| lens[i]).max().unwrap();
                let logit_rows: usize = p.iter().map(|&i| rows[i]).sum();
                assert!(p.len() == 1 || (p.len() * longest <= budget.tokens && logit_rows <= budget.logit_rows), "case {case}: pass {p:?} over {budget:?}");
                p.iter().for_each(|&i| seen[i] += 1);
            }
            assert!(seen.iter().all(|&c| c == 1), "case {case}: {seen:?}");
        }
        // Short sequences share a pass: 10 of length 4 under 4096 tokens.
        assert_eq!(PassBudget { tokens: 4096, logit_rows: 1024 }.plan(&[4; 10], &[1; 10]).len(), 1);
    }

    fn grouping_cost(lens: &[usize], groups: &[Vec<usize>], overhead: usize) -> usize {
        groups.iter().map(|g| g.len() * g.iter().map(|&i| lens[i]).max().unwrap() + overhead).sum()
    }

    /// Every sequence in exactly one group, groups shortest first with sorted indices, and the
    /// cost no higher than the best of every split of the sorted lengths into runs (brute force
    /// over all 2^(n−1) of them); the extremes: no overhead runs each length apart, an infinite
    /// one keeps one group.
    #[test]
    fn length_groups_are_a_cheapest_split() {
        let mut rng = crate::testing::rng(11);
        for case in 0..300 {
            let n = rng.random_range(1..11);
            let overhead = [0, 1, 7, 16, 128, usize::MAX][case % 6];
            let lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..30)).collect();
            let groups = length_groups(&lens, overhead);
            let mut seen = vec![0; n];
            for g in &groups {
                assert!(!g.is_empty() && g.windows(2).all(|w| w[0] < w[1]), "case {case}: group {g:?}");
                g.iter().for_each(|&i| seen[i] += 1);
            }
            assert!(seen.iter().all(|&c| c == 1), "case {case}: {groups:?}");
            for w in groups.windows(2) {
                let longest = w[0].iter().map(|&i| lens[i]).max().unwrap();
                assert!(w[1].iter().all(|&i| lens[i] > longest), "case {case}: groups out of order {groups:?} for {lens:?}");
            }
            if overhead == usize::MAX {
                assert_eq!(groups.len(), 1, "case {case}");
                continue;
            }
            let mut sorted = lens.clone();
            sorted.sort_unstable();
            let best = (0..1usize << (n - 1))
                .map(|cuts| {
                    let (mut cost, mut start) = (0, 0);
                    for j in 1..=n {
                        if j == n || cuts >> (j - 1) & 1 == 1 {
                            cost += (j - start) * sorted[j - 1] + overhead;
                            start = j;
                        }
                    }
                    cost
                })
                .min()
                .unwrap();
            assert_eq!(grouping_cost(&lens, &groups, overhead), best, "case {case}: {lens:?} overhead {overhead} → {groups:?}");
            if overhead == 0 {
                let mut distinct = sorted.clone();
                distinct.dedup();
                assert_eq!(groups.len(), distinct.len(), "case {case}");
            }
        }
        assert!(length_groups(&[], 16).is_empty());
    }

    fn span_cost(spans: &[(usize, usize)], groups: &[Vec<usize>], overhead: usize) -> usize {
        groups.iter().map(|g| g.len() * (g.iter().map(|&i| spans[i].1).max().unwrap() - g.iter().map(|&i| spans[i].0).min().unwrap()) + overhead).sum()
    }

    /// Every sequence in exactly one group; the cost that of the best split into runs of the
    /// best of the three orders (brute force over every split of each); never above the
    /// split by length alone, costed by spans; with every start 0, `length_groups`' groups.
    #[test]
    fn span_groups_are_the_cheapest_runs_of_three_orders() {
        let mut rng = crate::testing::rng(12);
        for case in 0..300 {
            let n = rng.random_range(1..10);
            let overhead = [0, 1, 7, 16, 128][case % 5];
            let spans: Vec<(usize, usize)> = (0..n)
                .map(|_| {
                    let len = rng.random_range(1..25);
                    (rng.random_range(0..len), len)
                })
                .collect();
            let groups = span_groups(&spans, overhead);
            let mut seen = vec![0; n];
            groups.iter().flatten().for_each(|&i| seen[i] += 1);
            assert!(seen.iter().all(|&c| c == 1), "case {case}: {groups:?}");
            let best = SPAN_ORDERS
                .iter()
                .map(|key| {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.sort_by_key(|&i| (key(spans[i]), i));
                    (0..1usize << (n - 1))
                        .map(|cuts| {
                            let (mut runs, mut start) = (vec![], 0);
                            for j in 1..=n {
                                if j == n || cuts >> (j - 1) & 1 == 1 {
                                    runs.push(order[start..j].to_vec());
                                    start = j;
                                }
                            }
                            span_cost(&spans, &runs, overhead)
                        })
                        .min()
                        .unwrap()
                })
                .min()
                .unwrap();
            let got = span_cost(&spans, &groups, overhead);
            assert_eq!(got, best, "case {case}: {spans:?} overhead {overhead} → {groups:?}");
            let lens: Vec<usize> = spans.iter().map(|s| s.1).collect();
            assert!(got <= span_cost(&spans, &length_groups(&lens, overhead), overhead), "case {case}");
            let from_start: Vec<(usize, usize)> = lens.iter().map(|&l| (0, l)).collect();
            assert_eq!(span_groups(&from_start, overhead), length_groups(&lens, overhead), "case {case}");
        }
        assert_eq!(span_groups(&[(3, 9), (1, 4), (8, 9)], usize::MAX).len(), 1);
    }
}
