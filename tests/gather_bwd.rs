//! Embedding backward: scatter_add_rows (the gradient of gather_rows w.r.t. the table) on every
//! adapter against the f64 oracle, deterministic, and the oracle against finite differences.

mod common;
use common::*;
use revive::cpu;
use revive::gpu::{Gpu, SplitLimits};
use revive::ops::gather::scatter_add_rows;

fn check(gpu: &Gpu, n: usize, cols: usize, vocab: usize, seed: u64) -> Result<(), String> {
    let mut r = rng(seed);
    let d_rows = random_vec(&mut r, n * cols);
    // Repeats (ids drawn from a small range) and ids at both ends of the vocabulary.
    let ids: Vec<u32> = (0..n).map(|i| if i % 5 == 4 { (vocab - 1) as u32 } else { ((i * 7919) % vocab.min(13)) as u32 }).collect();
    let t = ok(gpu.upload(&d_rows, &[n, cols]))?;
    let got = ok(scatter_add_rows(gpu, &t, &ids, vocab))?;
    if got.shape() != [vocab, cols] {
        return Err(format!("shape {:?}, expected [{vocab}, {cols}]", got.shape()));
    }
    let got = ok(gpu.download(&got))?;
    // Sums of a handful of values: 1e-5 like the forward ops.
    compare(&format!("scatter_add_rows n={n} cols={cols} vocab={vocab}"), &got, &cpu::scatter_add_rows(&d_rows, cols, &ids, vocab), Tolerance::F32)?;
    let again = ok(gpu.download(&ok(scatter_add_rows(gpu, &t, &ids, vocab))?))?;
    if again != got {
        return Err("scatter_add_rows is not deterministic".into());
    }
    Ok(())
}

#[test]
fn scatter_add_rows_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(n, cols, vocab)) in [(1, 1, 1), (7, 13, 3), (50, 257, 101), (300, 576, 49152), (17, 1, 5)].iter().enumerate() {
            check(gpu, n, cols, vocab, 6100 + i as u64)?;
        }
        Ok(())
    });
}

#[test]
fn scatter_add_rows_splits_across_dispatches() {
    for_each_gpu(|gpu| {
        // Three distinct ids per dispatch, and an output span limited to one small binding.
        let gpu = &gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        check(gpu, 40, 11, 200, 6200)?;
        check(gpu, 23, 37, 29, 6201)
    });
}

#[test]
fn scatter_add_rows_oracle_matches_finite_differences() {
    let (n, cols, vocab) = (9, 4, 6);
    let ids: Vec<u32> = vec![3, 0, 3, 5, 1, 3, 0, 2, 5];
    let d_rows = random_vec(&mut rng(6300), n * cols);
    let table: Vec<f64> = random_vec(&mut rng(6301), vocab * cols).into_iter().map(f64::from).collect();
    // Σ d_rows · gather(table, ids), in f64.
    let f = |t: &[f64]| {
        ids.iter().enumerate().map(|(i, &id)| (0..cols).map(|j| d_rows[i * cols + j] as f64 * t[id as usize * cols + j]).sum::<f64>()).sum::<f64>()
    };
    let g = cpu::scatter_add_rows(&d_rows, cols, &ids, vocab);
    check_gradient("scatter_add_rows", f, &table, &g, 24, 1e-5, 1e-6).unwrap();
}

#[test]
fn scatter_add_rows_rejects_bad_arguments() {
    for_each_gpu(|gpu| {
        let d = ok(gpu.upload(&[0.0; 6], &[3, 2]))?;
        let err = scatter_add_rows(gpu, &d, &[0, 1], 4).err().ok_or("accepted 2 ids for 3 rows")?.to_string();
        if !(err.contains("scatter_add_rows") && err.contains("d_rows")) {
            return Err(format!("unexpected message: {err}"));
        }
        let err = scatter_add_rows(gpu, &d, &[0, 1, 4], 4).err().ok_or("accepted id 4 for vocab 4")?.to_string();
        if !(err.contains("scatter_add_rows") && err.contains("id 4")) {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}
