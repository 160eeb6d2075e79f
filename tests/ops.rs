//! Reductions, elementwise ops, strided copies, softmax and gather on every adapter against the
//! f64 oracle, on awkward shapes.

mod common;
use common::*;
use revive::cpu;
use revive::ops::elementwise::{self, View};
use revive::ops::gather::{gather_rows, gather_rows_at, gather_rows_from};
use revive::ops::reduce::{reduce_all, reduce_rows, ReduceOp};
use revive::ops::softmax::softmax_rows;

const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 7), (7, 1), (13, 257), (31, 1000), (3, 4099), (500, 3), (64, 512)];

fn positive(v: Vec<f32>) -> Vec<f32> {
    // Sums of mixed-sign data can cancel to near zero, where a relative bound means nothing.
    v.into_iter().map(|x| x.abs() + 1e-3).collect()
}

#[test]
fn reduce_rows_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::SumSq] {
                let mut r = rng(i as u64);
                let x = random_vec(&mut r, rows * cols);
                let x = if op == ReduceOp::Sum { positive(x) } else { x };
                let t = ok(gpu.upload(&x, &[rows, cols]))?;
                let got = ok(gpu.download(&ok(reduce_rows(gpu, &t, op))?))?;
                compare(&format!("reduce_rows {op:?} {rows}x{cols}"), &got, &cpu::reduce_rows(&x, cols, op), Tolerance::F32)?;
            }
        }
        Ok(())
    });
}

/// Rows longer than 65,535 strides of the workgroup's 256 threads (17,000,000 values): a
/// software adapter stops an invocation after 65,535 iterations of one loop, so such rows are
/// reduced in passes.
#[test]
fn reduce_rows_takes_rows_past_the_adapters_loop_limit() {
    for_each_gpu(|gpu| {
        let (rows, cols) = (2, 17_000_000);
        let mut x = positive(random_vec(&mut rng(30), rows * cols));
        // The largest value at each row's end, where a scan stopped early would not reach.
        x[cols - 1] = 5.0;
        x[rows * cols - 1] = 6.0;
        let t = ok(gpu.upload(&x, &[rows, cols]))?;
        for op in [ReduceOp::Max, ReduceOp::Sum] {
            let got = ok(gpu.download(&ok(reduce_rows(gpu, &t, op))?))?;
            compare(&format!("reduce_rows {op:?} {rows}x{cols}"), &got, &cpu::reduce_rows(&x, cols, op), Tolerance::F32)?;
        }
        Ok(())
    });
}

#[test]
fn reduce_all_matches_oracle() {
    for_each_gpu(|gpu| {
        // Past 16384 elements the reduction takes a second pass; past 16384^2 a third.
        for (i, n) in [1usize, 2, 255, 256, 257, 16_383, 16_385, 100_003].into_iter().enumerate() {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::SumSq] {
                let mut r = rng(10 + i as u64);
                let x = random_vec(&mut r, n);
                let x = if op == ReduceOp::Sum { positive(x) } else { x };
                let t = ok(gpu.upload(&x, &[n]))?;
                let got = ok(gpu.download(&ok(reduce_all(gpu, &t, op))?))?;
                compare(&format!("reduce_all {op:?} n={n}"), &got, &[cpu::reduce_all(&x, op)], Tolerance::F32)?;
            }
        }
        Ok(())
    });
}

#[test]
fn elementwise_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, n) in [1usize, 3, 255, 257, 1009, 65_537].into_iter().enumerate() {
            let mut r = rng(20 + i as u64);
            let x = random_vec(&mut r, n);
            let y = random_vec(&mut r, n);
            let (tx, ty) = (ok(gpu.upload(&x, &[n]))?, ok(gpu.upload(&y, &[n]))?);
            let sum = ok(gpu.download(&ok(elementwise::add(gpu, &tx, &ty))?))?;
            compare(&format!("add n={n}"), &sum, &cpu::add(&x, &y), Tolerance::F32)?;
            let scaled = ok(gpu.download(&ok(elementwise::scale(gpu, &tx, -2.5))?))?;
            compare(&format!("scale n={n}"), &scaled, &cpu::scale(&x, -2.5), Tolerance::F32)?;
            ok(elementwise::axpy(gpu, 0.75, &tx, &ty))?;
            let axpy = ok(gpu.download(&ty))?;
            compare(&format!("axpy n={n}"), &axpy, &cpu::axpy(0.75, &x, &y), Tolerance::F32)?;
        }
        Ok(())
    });
}

#[test]
fn strided_copy_and_transpose_match_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let mut r = rng(30 + i as u64);
            let x = random_vec(&mut r, rows * cols);
            let t = ok(gpu.upload(&x, &[rows, cols]))?;
            let got = ok(gpu.download(&ok(elementwise::transpose(gpu, &t))?))?;
            let want: Vec<f64> = (0..cols).flat_map(|c| (0..rows).map(move |r| (r, c))).map(|(r, c)| x[r * cols + c] as f64).collect();
            compare(&format!("transpose {rows}x{cols}"), &got, &want, Tolerance::F32)?;
        }
        // A 4-D permutation into the middle of a larger destination, with an offset.
        let shape = [2usize, 3, 5, 7];
        let mut r = rng(40);
        let src = random_vec(&mut r, 2 * 3 * 5 * 7 + 11);
        let dst0 = random_vec(&mut r, 500);
        let sv = View { offset: 11, strides: [1, 2, 6, 30] };
        let dv = View { offset: 37, strides: [105, 35, 7, 1] };
        let (ts, td) = (ok(gpu.upload(&src, &[src.len()]))?, ok(gpu.upload(&dst0, &[500]))?);
        ok(elementwise::copy_strided(gpu, &ts, sv, &td, dv, &shape))?;
        let got = ok(gpu.download(&td))?;
        compare("copy_strided 4-D", &got, &cpu::copy_strided(&src, sv, &dst0, dv, &shape), Tolerance::F32)?;
        // A view past the end of a tensor is an error that says so.
        let bad = View { offset: 490, strides: [105, 35, 7, 1] };
        let err = elementwise::copy_strided(gpu, &ts, sv, &td, bad, &shape).err().ok_or("out-of-range view accepted")?;
        if !err.to_string().contains("destination") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

#[test]
fn softmax_matches_oracle() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let mut r = rng(50 + i as u64);
            let x: Vec<f32> = random_vec(&mut r, rows * cols).into_iter().map(|v| 8.0 * v).collect();
            let t = ok(gpu.upload(&x, &[rows, cols]))?;
            let got = ok(gpu.download(&ok(softmax_rows(gpu, &t))?))?;
            compare(&format!("softmax {rows}x{cols}"), &got, &cpu::softmax_rows(&x, cols), Tolerance::F32)?;
        }
        Ok(())
    });
}

/// Rows gathered at indices a kernel left on the GPU (f32, `stride` apart, as `row_top_k`
/// writes them): the oracle's rows at valid indices, NaN rows wherever the index is not a whole
/// number in range (NaN, ±∞, negative, fractional, the row count), bad calls refused.
#[test]
fn gather_at_found_indices_matches_oracle_and_poisons_bad_ones() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            for stride in [1, 2, 5] {
                let mut r = rng(90 + i as u64);
                let table = random_vec(&mut r, rows * cols);
                let n = 2 * rows + 3;
                let ids: Vec<u32> = (0..n).map(|j| ((j * 13 + i + stride) % rows) as u32).collect();
                // The gaps hold values that are not indices, as row_top_k's other picks are.
                let mut index = vec![-7.5f32; (n - 1) * stride + 1];
                let mut want = cpu::gather_rows(&table, cols, &ids);
                for (j, &id) in ids.iter().enumerate() {
                    index[j * stride] = id as f32;
                }
                let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 0.5, rows as f32, 1e30];
                for (b, &v) in bad.iter().enumerate() {
                    let j = (b * 5 + 1) % n;
                    index[j * stride] = v;
                    want[j * cols..(j + 1) * cols].fill(f64::NAN);
                }
                let t = ok(gpu.upload(&table, &[rows, cols]))?;
                let idx = ok(gpu.upload(&index, &[index.len()]))?;
                // Without poison, over a pooled buffer that held finite values: rows the kernel
                // left unwritten would come back finite.
                let plain = gpu.with_poison(false);
                drop(ok(plain.full(&[n, cols], 1.0))?);
                let got = ok(plain.download(&ok(gather_rows_at(&plain, &t, &idx, stride, n))?))?;
                for (j, row) in got.chunks(cols).enumerate() {
                    let expect_nan = want[j * cols].is_nan();
                    if row.iter().any(|x| x.is_nan() != expect_nan) {
                        return Err(format!("gather_rows_at {rows}x{cols} stride {stride}: row {j} (index {}) NaN where it should {}be", index[j * stride], if expect_nan { "" } else { "not " }));
                    }
                }
                let valid = |v: &[f64]| v.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect::<Vec<f64>>();
                let got_valid: Vec<f32> = got.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect();
                compare(&format!("gather_rows_at {rows}x{cols} stride {stride}"), &got_valid, &valid(&want), Tolerance::F32)?;
                if gather_rows_at(gpu, &t, &idx, stride, n + 1).is_ok() {
                    return Err("more indices than the tensor holds accepted".into());
                }
                if gather_rows_at(gpu, &t, &idx, 0, n).is_ok() {
                    return Err("stride 0 accepted".into());
                }
                let ids_u32 = ok(gpu.upload_u32(&ids, &[n]))?;
                if gather_rows_at(gpu, &t, &ids_u32, 1, n).is_ok() {
                    return Err("u32 indices accepted as f32".into());
                }
            }
        }
        Ok(())
    });
}

#[test]
fn gather_matches_oracle_and_rejects_bad_ids() {
    for_each_gpu(|gpu| {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let mut r = rng(60 + i as u64);
            let table = random_vec(&mut r, rows * cols);
            let ids: Vec<u32> = (0..(2 * rows + 1)).map(|j| ((j * 7 + i) % rows) as u32).collect();
            let t = ok(gpu.upload(&table, &[rows, cols]))?;
            let got = ok(gpu.download(&ok(gather_rows(gpu, &t, &ids))?))?;
            compare(&format!("gather {rows}x{cols}"), &got, &cpu::gather_rows(&table, cols, &ids), Tolerance::F32)?;
            let err = gather_rows(gpu, &t, &[rows as u32]).err().ok_or("out-of-range id accepted")?;
            if !err.to_string().contains("out of range") {
                return Err(format!("unexpected message: {err}"));
            }
            // From three tables stacked (one of a single row): ids across all of them.
            let (r2, r3) = (1, rows + 2);
            let (t2v, t3v) = (random_vec(&mut r, r2 * cols), random_vec(&mut r, r3 * cols));
            let stacked: Vec<f32> = [table.clone(), t2v.clone(), t3v.clone()].concat();
            let total = rows + r2 + r3;
            let ids: Vec<u32> = (0..(total + 3)).map(|j| ((j * 11 + i) % total) as u32).collect();
            let (t2, t3) = (ok(gpu.upload(&t2v, &[r2, cols]))?, ok(gpu.upload(&t3v, &[r3, cols]))?);
            let got = ok(gpu.download(&ok(gather_rows_from(gpu, &[&t, &t2, &t3], &ids))?))?;
            compare(&format!("gather from 3 tables, {total}x{cols}"), &got, &cpu::gather_rows(&stacked, cols, &ids), Tolerance::F32)?;
            if gather_rows_from(gpu, &[&t, &t2], &[(rows + r2) as u32]).is_ok() {
                return Err("an id past the stacked tables was accepted".into());
            }
            let wide = ok(gpu.upload(&random_vec(&mut r, cols + 1), &[1, cols + 1]))?;
            if gather_rows_from(gpu, &[&t, &wide], &[0]).is_ok() {
                return Err("tables of different widths were accepted".into());
            }
        }
        Ok(())
    });
}
