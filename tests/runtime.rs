//! The runtime itself: both backends present where required, the pool and its switch, the
//! pipeline cache, poisoning, timing, and clear errors instead of panics.

mod common;
use common::*;
use revive::gpu::{BackendChoice, Gpu};
use revive::ops::elementwise;

#[test]
fn adapters_are_found_and_labelled() {
    let gpus = gpus();
    assert!(!gpus.is_empty());
    for g in gpus {
        assert!(!g.info().name.is_empty());
        // The device was opened with the adapter's own limits, not wgpu's lower defaults.
        assert!(g.limits().max_storage_buffer_binding_size >= 128 << 20, "{}", g.label());
    }
}

#[test]
fn pool_reuses_buffers_and_can_be_switched_off() {
    for_each_gpu(|gpu| {
        let gpu = gpu.with_split_limits(gpu.split_limits());
        let size = 12_345;
        let first = ok(gpu.empty(&[size]))?;
        let addr = format!("{:?}", first.buffer());
        drop(first);
        let again = ok(gpu.empty(&[size]))?;
        if gpu.pool().reuse() && format!("{:?}", again.buffer()) != addr {
            return Err("a freed buffer of the same size was not reused".into());
        }
        drop(again);
        let before = gpu.pool_stats();
        if before.pooled_bytes == 0 && gpu.pool().reuse() {
            return Err("freed buffers are not kept".into());
        }
        Ok(())
    });
}

/// A memory budget (REVIVE_MEMORY_LIMIT) is kept: an allocation past it is an OutOfMemory
/// error that says so, idle pooled buffers are given back before refusing, and the device works
/// on afterwards.
#[test]
fn the_memory_budget_refuses_cleanly_and_trims_the_pool_first() {
    for adapter in Gpu::adapters(BackendChoice::Auto) {
        let gpu = Gpu::open(adapter).unwrap().with_poison(true);
        let base = gpu.pool_stats().live_bytes + gpu.pool_stats().pooled_bytes;
        gpu.pool().set_budget(Some(base + (64 << 10)));
        // 40 KiB fits, then a second 40 KiB does not.
        let a = gpu.empty(&[10 << 10]).unwrap();
        let e = gpu.empty(&[10 << 10]).expect_err("an allocation past the budget succeeded");
        assert!(matches!(e, revive::Error::OutOfMemory { .. }), "{e}");
        assert!(e.to_string().contains("REVIVE_MEMORY_LIMIT"), "{e}");
        // Freed, the first buffer idles in the pool; a buffer of another size needs its room.
        drop(a);
        assert!(gpu.pool_stats().pooled_bytes >= 40 << 10 || !gpu.pool().reuse());
        let b = gpu.upload(&vec![2.0; 12 << 10], &[12 << 10]).expect("the idle buffer was not given back");
        assert_eq!(gpu.download(&b).unwrap(), vec![2.0; 12 << 10]);
        assert_eq!(gpu.pool_stats().pooled_bytes, 0);
        drop(b);
        gpu.pool().set_budget(None);
        assert!(gpu.empty(&[1 << 20]).is_ok());
    }
}

#[test]
fn results_are_identical_with_and_without_reuse() {
    // A separate device so switching reuse off cannot affect other tests.
    for adapter in Gpu::adapters(BackendChoice::Auto) {
        let gpu = Gpu::open(adapter).unwrap().with_poison(true);
        let mut results = vec![];
        for reuse in [true, false] {
            gpu.pool().set_reuse(reuse);
            let mut r = rng(5);
            let x = random_vec(&mut r, 1000);
            let mut t = gpu.upload(&x, &[1000]).unwrap();
            for _ in 0..5 {
                let s = elementwise::scale(&gpu, &t, 1.5).unwrap();
                t = elementwise::add(&gpu, &s, &t).unwrap();
            }
            results.push(gpu.download(&t).unwrap());
            if !reuse {
                assert_eq!(gpu.pool_stats().pooled_bytes, 0, "reuse off keeps nothing");
            }
        }
        assert_eq!(results[0], results[1], "{}", gpu.label());
    }
}

#[test]
fn pipelines_are_cached_by_shader_entry_and_constants() {
    for_each_gpu(|gpu| {
        let s = revive::shaders::REDUCE;
        let a = ok(gpu.pipeline(s, "reduce_rows", &[("OP", 0.0)]))?;
        let b = ok(gpu.pipeline(s, "reduce_rows", &[("OP", 0.0)]))?;
        let c = ok(gpu.pipeline(s, "reduce_rows", &[("OP", 1.0)]))?;
        if !std::sync::Arc::ptr_eq(a.pipeline(), b.pipeline()) {
            return Err("same key built twice".into());
        }
        if std::sync::Arc::ptr_eq(a.pipeline(), c.pipeline()) {
            return Err("different constants share a pipeline".into());
        }
        let err = gpu.pipeline(s, "no_such_entry", &[]).err().ok_or("a missing entry point was accepted")?;
        if !err.to_string().contains("no_such_entry") {
            return Err(format!("error does not name the entry: {err}"));
        }
        Ok(())
    });
}

/// Building a pipeline is counted once, with its time; finding it again costs nothing.
#[test]
fn pipeline_builds_are_counted_once() {
    // Counts: a device of its own, which no other test of this binary builds pipelines on.
    for_each_fresh_gpu(false, |gpu| {
        let s = revive::shaders::REDUCE;
        let before = gpu.runtime_stats();
        ok(gpu.pipeline(s, "reduce_rows", &[("OP", 0.0)]))?;
        let built = gpu.runtime_stats() - before;
        ok(gpu.pipeline(s, "reduce_rows", &[("OP", 0.0)]))?;
        let again = gpu.runtime_stats() - before;
        if built.pipelines != 1 || built.pipeline_ns == 0 || again.pipelines != 1 || again.pipeline_ns != built.pipeline_ns {
            return Err(format!("built {} pipelines in {} ns, then {} in {} ns", built.pipelines, built.pipeline_ns, again.pipelines, again.pipeline_ns));
        }
        Ok(())
    });
}

#[test]
fn poison_marks_new_tensors_nan() {
    for_each_gpu(|gpu| {
        let t = ok(gpu.empty(&[37]))?;
        let v = ok(gpu.download(&t))?;
        if !v.iter().all(|x| x.is_nan()) {
            return Err("poisoned tensor is not all NaN".into());
        }
        // And the comparison rejects NaN wherever it appears.
        if compare("nan", &[0.0, f32::NAN], &[0.0, 1.0], Tolerance::F32).is_ok() {
            return Err("compare accepted NaN".into());
        }
        Ok(())
    });
}

#[test]
fn timing_reports_a_positive_duration() {
    for_each_gpu(|gpu| {
        let mut r = rng(9);
        let x = ok(gpu.upload(&random_vec(&mut r, 1 << 16), &[1 << 16]))?;
        let t = ok(gpu.time(|| elementwise::scale(gpu, &x, 2.0).map(|_| ())))?;
        if t.wall.is_zero() || t.best().is_zero() {
            return Err(format!("zero duration: {t:?}"));
        }
        // 30 ms of the host's own CPU inside the region, then a read (a wait): the host's part
        // and its CPU time hold the work, the wait is apart from it.
        let t = ok(gpu.time(|| {
            let start = cpu_time::ThreadTime::now();
            let mut spin = 0u64;
            while start.elapsed() < std::time::Duration::from_millis(30) {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            gpu.download(&elementwise::scale(gpu, &x, 2.0)?).map(|_| ())
        }))?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let cpu = t.host_cpu.ok_or("no thread CPU time on this platform")?;
        if t.waited > t.wall || ms(t.host()) < 29.0 || ms(cpu) < 29.0 || ms(cpu) > ms(t.wall) + 1.0 {
            return Err(format!("wall {:.1} ms, waited {:.1} ms, host {:.1} ms, host CPU {:.1} ms", ms(t.wall), ms(t.waited), ms(t.host()), ms(cpu)));
        }
        Ok(())
    });
}

#[test]
fn unknown_backend_and_missing_adapter_are_clear_errors() {
    let err = BackendChoice::resolve(Some("cuda")).unwrap_err().to_string();
    assert!(err.contains("cuda") && err.contains("vulkan"), "{err}");
    // No Metal or DX12 on Linux: the error names what was tried and what to install.
    #[cfg(target_os = "linux")]
    {
        let err = Gpu::new(BackendChoice::Metal).err().expect("no Metal on Linux").to_string();
        assert!(err.contains("metal") && err.contains("macOS"), "{err}");
    }
}

#[test]
fn upload_with_wrong_length_is_an_error() {
    for_each_gpu(|gpu| {
        let err = gpu.upload(&[1.0, 2.0, 3.0], &[2, 2]).err().ok_or("accepted 3 values for 2x2")?;
        if !err.to_string().contains("[2, 2]") {
            return Err(format!("error does not name the shape: {err}"));
        }
        Ok(())
    });
}

#[test]
fn every_entry_point_follows_the_binding_convention() {
    // Binding 0 the uniform parameters, 1..=n storage: the explicit layouts depend on it.
    let mut shaders: Vec<_> = revive::shaders::all_variants().into_iter().map(|(s, _)| s).collect();
    shaders.dedup();
    for shader in shaders {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        for ep in &module.entry_points {
            let r = revive::gpu::reflect(shader, &ep.name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!r.signature.is_empty(), "{}::{} binds no storage", shader.name, ep.name);
            assert!(r.params_size > 0 && r.params_size.is_multiple_of(4), "{}::{} has {} bytes of parameters", shader.name, ep.name, r.params_size);
        }
    }
    let reduce = revive::gpu::reflect(revive::shaders::REDUCE, "reduce_rows").unwrap().signature;
    assert_eq!(reduce.last(), Some(&false), "the output is read_write");
    assert_eq!(reduce.first(), Some(&true), "the input is read-only");
}

#[test]
fn steady_state_creates_nothing_and_shares_passes() {
    // The same chain twice: the second run reuses every buffer and bind group, records all
    // its dispatches into few passes, and gives the same bits. Each adapter gets a device of
    // its own: the counters are per device, and the other tests of this binary run alongside
    // on the shared ones. (Poisoning writes every new tensor from the host, which ends the
    // pass, so it is off here.)
    for_each_fresh_gpu(false, |gpu| {
        gpu.pool().set_reuse(true);
        let mut r = rng(11);
        let x = random_vec(&mut r, 3 * 577);
        let w = random_vec(&mut r, 577);
        let chain = |gpu: &Gpu| -> revive::Result<Vec<f32>> {
            let mut t = gpu.upload(&x, &[3, 577])?;
            let wt = gpu.upload(&w, &[577])?;
            for _ in 0..100 {
                let n = revive::ops::norm::rms_norm(gpu, &t, &wt, 1e-5)?;
                t = elementwise::add(gpu, &n, &t)?;
                t = elementwise::scale(gpu, &t, 0.5)?;
            }
            gpu.download(&t)
        };
        let first = ok(chain(gpu))?;
        let before = gpu.runtime_stats();
        let second = ok(chain(gpu))?;
        let d = gpu.runtime_stats() - before;
        if first.iter().zip(&second).any(|(a, b)| a.to_bits() != b.to_bits()) || first.iter().any(|v| !v.is_finite()) {
            return Err("the repeated chain gave other or non-finite values".into());
        }
        if d.dispatches < 300 {
            return Err(format!("expected ≥ 300 dispatches, counted {}", d.dispatches));
        }
        if d.buffers != 0 || d.bind_groups != 0 {
            return Err(format!("steady state created {} buffers and {} bind groups", d.buffers, d.bind_groups));
        }
        if d.passes * 16 > d.dispatches {
            return Err(format!("{} dispatches in {} passes", d.dispatches, d.passes));
        }
        Ok(())
    });
}

/// The bind-group cache tells ranges of one buffer apart (offset and length), also when a
/// range is bound the second time and comes from the cache.
#[test]
fn bind_groups_are_told_apart_by_their_ranges() {
    for_each_gpu(|gpu| {
        let x: Vec<f32> = (0..4 * 256).map(|i| i as f32).collect();
        let t = ok(gpu.upload(&x, &[4 * 256]))?;
        for round in 0..2 {
            for (first, len) in [(0, 256), (256, 256), (0, 512), (512, 511), (512, 512)] {
                let y = ok(gpu.download(&ok(elementwise::scale(gpu, &ok(t.view(first, &[len]))?, 2.0))?))?;
                let want: Vec<f32> = x[first..first + len].iter().map(|v| 2.0 * v).collect();
                if y != want {
                    let bad = y.iter().zip(&want).position(|(a, b)| a != b);
                    return Err(format!("round {round}, elements {first}..{}: {} values, first wrong at {bad:?}", first + len, y.len()));
                }
            }
        }
        Ok(())
    });
}

/// A cached bind group holds the buffers it binds: when the pool gives its idle buffers back
/// (a memory budget reached, an allocation the device refused), the cache lets its groups go
/// too, or the memory would stay taken.
#[test]
fn cached_bind_groups_go_when_the_pool_drops_its_idle_buffers() {
    for_each_fresh_gpu(false, |gpu| {
        let x = ok(gpu.upload(&[1.0, 2.0, 3.0], &[3]))?;
        let y = ok(gpu.upload(&[0.0; 3], &[3]))?;
        // y += 2x on live tensors: no buffer comes from the pool, so only the cache decides.
        let groups_made = || -> Result<u64, String> {
            let before = gpu.runtime_stats();
            ok(elementwise::axpy(gpu, 2.0, &x, &y))?;
            ok(gpu.sync())?;
            Ok((gpu.runtime_stats() - before).bind_groups)
        };
        groups_made()?;
        if groups_made()? != 0 {
            return Err("the same dispatch on the same tensors created a bind group again".into());
        }
        // Nothing idle: nothing is dropped and the cache stays.
        gpu.pool().trim();
        gpu.pool().trim();
        if groups_made()? != 0 {
            return Err("a trim that dropped nothing cleared the cache".into());
        }
        drop(ok(gpu.empty(&[5]))?);
        gpu.pool().trim();
        if gpu.pool().reuse() && groups_made()? != 1 {
            return Err("after the pool dropped its idle buffers the cached group was reused".into());
        }
        if ok(gpu.download(&y))? != [8.0, 16.0, 24.0] {
            return Err("y += 2x four times came out wrong".into());
        }
        Ok(())
    });
}

/// Bind groups are cached by each buffer's number in its device's pool, so a tensor of another
/// device (its numbers count from zero too) is refused rather than matched to this device's.
#[test]
fn a_tensor_of_another_device_is_refused() {
    for_each_gpu(|gpu| {
        let adapter = Gpu::adapters(BackendChoice::Auto).into_iter().find(|a| a.get_info().name == gpu.info().name && a.get_info().backend == gpu.info().backend);
        let other = ok(Gpu::open(adapter.ok_or("the adapter is not offered again")?))?;
        let mine = ok(gpu.upload(&[1.0, 2.0], &[2]))?;
        let theirs = ok(other.upload(&[3.0, 4.0], &[2]))?;
        match elementwise::scale(gpu, &theirs, 2.0) {
            Err(e) if e.to_string().contains("another device") => {}
            Err(e) => return Err(format!("refused, but saying: {e}")),
            Ok(_) => return Err("another device's tensor was bound".into()),
        }
        if ok(gpu.download(&ok(elementwise::scale(gpu, &mine, 2.0))?))? != [2.0, 4.0] {
            return Err("the device's own tensor came out wrong after the refusal".into());
        }
        Ok(())
    });
}

/// A read started without waiting returns the values of the moment it was started, though the
/// buffer is overwritten before it finishes and reads finish out of order; its staging buffers
/// are reused, so greedy generation running ahead creates no buffer in steady state.
#[test]
fn reads_started_early_return_the_values_of_their_moment() {
    use revive::model::forward::GpuModel;
    use revive::model::generate::{generate_many_reading, Readback, Sampling};
    use revive::model::random::random_weights;
    use revive::model::Config;
    for_each_fresh_gpu(false, |gpu| {
        gpu.pool().set_reuse(true);
        for n in [1usize, 3, 1000, 65_537] {
            let first_values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let later_values: Vec<f32> = (0..n).map(|i| -(i as f32) - 0.5).collect();
            let a = ok(gpu.upload(&first_values, &[n]))?;
            let b = ok(gpu.upload(&later_values, &[n]))?;
            let first = ok(gpu.download_later(&a))?;
            ok(gpu.copy_into(&b, &a))?;
            let later = ok(gpu.download_later(&a))?;
            let (got_later, got_first) = (ok(later.finish_f32())?, ok(first.finish_f32())?);
            if got_first != first_values || got_later != later_values {
                return Err(format!("{n} values: the early read or the later one came back wrong"));
            }
        }
        let w = random_weights(&Config::tiny_llama(), 5);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let prompts = vec![vec![3, 14, 15], vec![9]];
        let greedy = [Sampling::default(); 2];
        let warm = ok(generate_many_reading(&gm, &prompts, 12, &greedy, None, Readback::Ahead))?;
        let before = gpu.runtime_stats();
        let again = ok(generate_many_reading(&gm, &prompts, 12, &greedy, None, Readback::Ahead))?;
        let d = gpu.runtime_stats() - before;
        if again != warm || d.buffers != 0 || d.bind_groups != 0 || d.readbacks != 12 {
            return Err(format!(
                "greedy generation ahead, again: {again:?} (first {warm:?}), {} buffers and {} bind groups created, {} reads",
                d.buffers, d.bind_groups, d.readbacks
            ));
        }
        Ok(())
    });
}

#[test]
fn decoding_creates_no_buffers_or_bind_groups_in_steady_state() {
    // Each decoded token writes its keys and values one cache row further on: the write binds
    // the whole cache (not the moving row), so after the first one-token step every step reuses
    // the last step's buffers and bind groups. A tiny Llama, every adapter, a device each.
    use revive::model::batch::Batch;
    use revive::model::forward::{GpuModel, LogitRows};
    use revive::model::probe::Probes;
    use revive::model::random::random_weights;
    use revive::model::Config;
    let w = random_weights(&Config::tiny_llama(), 3);
    for_each_fresh_gpu(false, |gpu| {
        gpu.pool().set_reuse(true);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let mut cache = ok(gm.new_cache(1, 16))?;
        let step = |t: u32, cache: &mut revive::model::forward::KvCache| -> Result<(), String> {
            ok(gm.forward(&ok(Batch::new(&[vec![t]]))?, &Probes::default(), LogitRows::All, Some(cache)))?;
            Ok(())
        };
        ok(gm.forward(&ok(Batch::new(&[vec![3, 14, 15]]))?, &Probes::default(), LogitRows::Rows(vec![2]), Some(&mut cache)))?;
        step(9, &mut cache)?;
        let before = gpu.runtime_stats();
        for t in [26, 5, 35, 8] {
            step(t, &mut cache)?;
        }
        let d = gpu.runtime_stats() - before;
        if d.dispatches == 0 || d.buffers != 0 || d.bind_groups != 0 {
            return Err(format!("4 decoded tokens: {} dispatches, {} buffers and {} bind groups created", d.dispatches, d.buffers, d.bind_groups));
        }
        Ok(())
    });
}

#[test]
fn a_dispatch_that_binds_the_wrong_ranges_is_refused() {
    for_each_gpu(|gpu| {
        let t = ok(gpu.empty(&[16]))?;
        let (b, _) = ok(t.bind(gpu, 0, 16))?;
        let err = gpu
            .dispatch(revive::shaders::ELEMENTWISE, "scale", &[], &[0u8; 16], &[b], [1, 1, 1])
            .err()
            .ok_or("a dispatch with one range for a two-range kernel ran")?;
        if !err.to_string().contains("scale") {
            return Err(format!("the error does not name the kernel: {err}"));
        }
        Ok(())
    });
}

#[test]
fn paired_ops_take_one_dispatch_where_they_fit() {
    // rope_pair, write_kv_pair and rope_kv are one dispatch each for a decoding step's shapes (the
    // oracle tests check their values; this checks that the paired kernel is what ran). A
    // device each: the counters are per device.
    use revive::model::RopeStyle;
    use revive::ops::{attention::write_kv_pair, rope::rope_pair};
    for_each_fresh_gpu(false, |gpu| {
        let q = ok(gpu.upload(&random_vec(&mut rng(1), 9 * 64), &[1, 1, 9, 64]))?;
        let k = ok(gpu.upload(&random_vec(&mut rng(2), 3 * 64), &[1, 1, 3, 64]))?;
        let cache = [ok(gpu.full(&[1, 3, 8, 64], 0.0))?, ok(gpu.full(&[1, 3, 8, 64], 0.0))?];
        let before = gpu.runtime_stats();
        ok(rope_pair(gpu, &q, &k, 5, &revive::model::Rope::plain(10_000.0, 64, RopeStyle::Half)))?;
        let rope = (gpu.runtime_stats() - before).dispatches;
        let before = gpu.runtime_stats();
        ok(write_kv_pair(gpu, &k, &k, &cache[0], &cache[1], 5))?;
        let write = (gpu.runtime_stats() - before).dispatches;
        let before = gpu.runtime_stats();
        ok(revive::ops::rope::rope_kv(gpu, &q, &k, &k, &cache[0], &cache[1], 6, &revive::model::Rope::plain(10_000.0, 64, RopeStyle::Half)))?;
        let fused = (gpu.runtime_stats() - before).dispatches;
        if (rope, write, fused) != (1, 1, 1) {
            return Err(format!("rope_pair took {rope} dispatches, write_kv_pair {write}, rope_kv {fused} (want 1 each)"));
        }
        Ok(())
    });
}

/// Views that start off a binding boundary (3 elements into a buffer) give every op that may
/// read them — the paired rope and KV write, the norm, the matmul, the folded norm·product,
/// the copy into the cache — the values of the same data in a tensor of its own, and a view
/// given where a kernel takes a tensor whole is refused, not read from the wrong place.
#[test]
fn ops_read_views_that_start_off_a_binding_boundary() {
    use revive::model::RopeStyle;
    use revive::ops::{attention::write_kv_pair, matmul, norm, rope::rope_pair};
    for_each_gpu(|gpu| {
        let (hq, hk, d) = (3, 1, 8);
        let (nq, nk) = (hq * d, hk * d);
        let data = random_vec(&mut rng(70), 3 + nq + 2 * nk);
        let whole = ok(gpu.upload(&data, &[data.len()]))?;
        let view = |first: usize, shape: &[usize]| ok(whole.view(3 + first, shape));
        let copy = |first: usize, shape: &[usize]| ok(gpu.upload(&data[3 + first..3 + first + shape.iter().product::<usize>()], shape));
        let (q, k, v) = (view(0, &[1, 1, hq, d])?, view(nq, &[1, 1, hk, d])?, view(nq + nk, &[1, 1, hk, d])?);
        let (qc, kc, vc) = (copy(0, &[1, 1, hq, d])?, copy(nq, &[1, 1, hk, d])?, copy(nq + nk, &[1, 1, hk, d])?);
        let bits = |what: &str, a: &revive::Tensor, b: &revive::Tensor| -> Result<(), String> {
            if ok(gpu.download(a))? != ok(gpu.download(b))? {
                return Err(format!("{what}: the view and the copy disagree"));
            }
            Ok(())
        };
        let (rq, rk) = ok(rope_pair(gpu, &q, &k, 5, &revive::model::Rope::plain(10_000.0, d, RopeStyle::Half)))?;
        let (rqc, rkc) = ok(rope_pair(gpu, &qc, &kc, 5, &revive::model::Rope::plain(10_000.0, d, RopeStyle::Half)))?;
        bits("rope_pair q", &rq, &rqc)?;
        bits("rope_pair k", &rk, &rkc)?;
        let caches = || -> Result<[revive::Tensor; 2], String> { Ok([ok(gpu.full(&[1, hk, 4, d], 0.0))?, ok(gpu.full(&[1, hk, 4, d], 0.0))?]) };
        let ([kv, vv], [kcc, vcc]) = (caches()?, caches()?);
        ok(write_kv_pair(gpu, &k, &v, &kv, &vv, 2))?;
        ok(write_kv_pair(gpu, &kc, &vc, &kcc, &vcc, 2))?;
        bits("write_kv_pair keys", &kv, &kcc)?;
        bits("write_kv_pair values", &vv, &vcc)?;
        let (x, xc) = (view(0, &[nq / d, d])?, copy(0, &[nq / d, d])?);
        let g = ok(gpu.upload(&random_vec(&mut rng(71), d), &[d]))?;
        bits("rms_norm", &ok(norm::rms_norm(gpu, &x, &g, 1e-5))?, &ok(norm::rms_norm(gpu, &xc, &g, 1e-5))?)?;
        let m = ok(gpu.upload(&random_vec(&mut rng(72), 5 * d), &[5, d]))?;
        let t = matmul::Gemm { trans_b: true, ..Default::default() };
        bits("matmul", &ok(matmul::gemm(gpu, &x, &m, None, t))?, &ok(matmul::gemm(gpu, &xc, &m, None, t))?)?;
        bits("rms_norm_matvec", &ok(norm::rms_norm_matvec(gpu, &x, &g, &m, 1e-5))?, &ok(norm::rms_norm_matvec(gpu, &xc, &g, &m, 1e-5))?)?;
        let err = norm::rms_norm(gpu, &xc, &view(0, &[d])?, 1e-5).err().ok_or("a norm weight off the binding boundary was read")?;
        if !err.to_string().contains("binding boundary") {
            return Err(format!("unexpected message: {err}"));
        }
        Ok(())
    });
}

/// An edit's batch of short sequences is one attention dispatch per layer forward and two
/// backward, however many sequences it has (before, one per sequence and two per sequence and
/// kv head); the oracle tests check the values.
#[test]
fn a_batch_of_sequences_takes_one_attention_dispatch() {
    use revive::ops::attention::{attention, attention_bwd};
    for_each_fresh_gpu(false, |gpu| {
        let (b, t, hq, hkv, d) = (40, 6, 9, 3, 64);
        let q = ok(gpu.upload(&random_vec(&mut rng(3), b * t * hq * d), &[b, t, hq, d]))?;
        let kv = ok(gpu.upload(&random_vec(&mut rng(4), b * hkv * t * d), &[b, hkv, t, d]))?;
        let before = gpu.runtime_stats();
        ok(attention(gpu, &q, &kv, &kv, 0, 0.125))?;
        let forward = (gpu.runtime_stats() - before).dispatches;
        let before = gpu.runtime_stats();
        ok(attention_bwd(gpu, &q, &kv, &kv, 0, 0.125, &q))?;
        let backward = (gpu.runtime_stats() - before).dispatches;
        if (forward, backward) != (1, 2) {
            return Err(format!("{b} sequences: attention took {forward} dispatches, its backward {backward} (want 1 and 2)"));
        }
        Ok(())
    });
}

/// An Adam step of the targets (the taped upper layers, the loss, the backward pass) repeated
/// from the same idle buffers gets the same buffers, so its bind groups are all cached: the
/// third evaluation creates none and gives the second's bits. (Handing out the last-freed
/// buffer permuted them from step to step: most dispatches created a bind group.)
#[test]
fn a_repeated_backward_pass_creates_no_bind_groups() {
    use revive::model::backward::{DeltaPass, Term};
    use revive::model::batch::Batch;
    use revive::model::forward::GpuModel;
    use revive::model::random::random_weights;
    use revive::model::Config;
    let w = random_weights(&Config::tiny_llama(), 5);
    for_each_fresh_gpu(false, |gpu| {
        gpu.pool().set_reuse(true);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let seqs = vec![vec![3, 14, 15, 9, 2], vec![6, 5, 3, 5], vec![8, 9, 7]];
        let pass = ok(DeltaPass::new(&gm, ok(Batch::new(&seqs))?, 0, &[(0, 2), (1, 1), (2, 2)]))?;
        let terms = vec![Term::Nll { row: 4, token: 11, weight: 0.5 }, Term::Nll { row: 7, token: 3, weight: 1.0 }];
        let prepared = ok(pass.prepare_terms(&terms))?;
        let delta = random_vec(&mut rng(6), w.config.hidden);
        let mut last = None;
        for i in 0..3 {
            let before = gpu.runtime_stats();
            let lg = ok(pass.loss_and_grad_with(&delta, &prepared))?;
            let d = gpu.runtime_stats() - before;
            if i == 2 {
                if d.bind_groups != 0 {
                    return Err(format!("the third evaluation created {} bind groups for {} dispatches", d.bind_groups, d.dispatches));
                }
                let (loss, grad): (f64, Vec<f32>) = last.take().ok_or("no second evaluation")?;
                if loss.to_bits() != lg.loss.to_bits() || grad.iter().zip(&lg.grad).any(|(a, b)| a.to_bits() != b.to_bits()) {
                    return Err("the third evaluation's loss or gradient differs from the second's".into());
                }
            }
            last = Some((lg.loss, lg.grad));
        }
        Ok(())
    });
}

/// A device lost mid-run (destroyed here, as a driver reset or a watchdog takes it) makes every
/// later call that waits on it an [`revive::Error::DeviceLost`] naming the adapter — not a
/// panic, a hang or an error about something else — and raises the process's count of lost
/// devices, which is what tells a journaled session to go on on a new device; a new device on
/// the same adapter then computes as before.
#[test]
fn a_lost_device_is_reported_as_lost_and_a_new_one_works() {
    for adapter in Gpu::adapters(BackendChoice::Auto) {
        let gpu = Gpu::open(adapter.clone()).unwrap();
        let name = gpu.info().name.clone();
        let x = gpu.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
        let y = elementwise::add(&gpu, &x, &x).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), vec![2.0, 4.0, 6.0], "{name}");
        assert!(!gpu.is_lost());
        let before = revive::gpu::devices_lost();
        gpu.destroy();
        assert!(gpu.is_lost(), "{name}");
        assert!(revive::gpu::devices_lost() > before, "{name}: the loss was not counted");
        // Whatever step first meets the loss (a new buffer, the kernel, the read), the run ends
        // with the loss, and so does every wait after it.
        let got = elementwise::add(&gpu, &x, &y).and_then(|z| gpu.download(&z));
        match got {
            Err(revive::Error::DeviceLost { adapter, .. }) => assert_eq!(adapter, name),
            other => panic!("{name}: a product on a lost device gave {other:?}"),
        }
        let e = gpu.sync().expect_err("a wait on a lost device succeeded");
        assert!(e.to_string().contains("was lost") && e.to_string().contains("--resume"), "{name}: {e}");
        drop((x, y, gpu));
        // Lost without this program's knowing: only wgpu's device-lost callback can tell (as
        // with a driver's reset), and the wait after it must report the loss.
        let gpu = Gpu::open(adapter.clone()).unwrap();
        let x = gpu.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
        let before = revive::gpu::devices_lost();
        gpu.device().destroy();
        let e = elementwise::add(&gpu, &x, &x).and_then(|z| gpu.download(&z)).expect_err("a read on a destroyed device succeeded");
        assert!(matches!(e, revive::Error::DeviceLost { .. }), "{name}: the callback's loss came out as {e:?}");
        assert!(gpu.is_lost() && revive::gpu::devices_lost() > before, "{name}: the callback did not count the loss");
        drop((x, gpu));
        let fresh = Gpu::open(adapter).unwrap();
        let x = fresh.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
        let y = elementwise::add(&fresh, &x, &x).unwrap();
        assert_eq!(fresh.download(&y).unwrap(), vec![2.0, 4.0, 6.0], "{name}: a new device after the loss");
    }
}

/// Not a test of its own: the child process of `work_after_a_loss_stays_on_its_adapter`, run
/// with `REVIVE_LOSE_DEVICE_AFTER=1`, so that the first device it opens is lost after its first
/// submit, as by a fault.
#[test]
fn child_that_loses_its_first_device() {
    let (Ok(lost), Ok(other)) = (std::env::var("REVIVE_TEST_LOSS_CHILD"), std::env::var("REVIVE_TEST_LOSS_OTHER")) else { return };
    let (lost, other): (BackendChoice, BackendChoice) = (lost.parse().unwrap(), other.parse().unwrap());
    let gpu = Gpu::new(lost).unwrap();
    let x = gpu.upload(&[1.0, 2.0], &[2]).unwrap();
    let e = elementwise::add(&gpu, &x, &x).and_then(|y| gpu.download(&y)).expect_err("the injected loss did not happen");
    assert!(matches!(e, revive::Error::DeviceLost { .. }), "{e:?}");
    drop((x, gpu));
    match Gpu::new(other) {
        Err(revive::Error::LostAdapterAbsent { adapter }) => println!("refused another adapter after the loss of {adapter}"),
        Err(e) => panic!("another adapter after a loss: {e}"),
        Ok(g) => panic!("a new device on {} after the loss of another adapter", g.label()),
    }
    let again = Gpu::new(lost).unwrap();
    let x = again.upload(&[1.0, 2.0], &[2]).unwrap();
    assert_eq!(again.download(&elementwise::add(&again, &x, &x).unwrap()).unwrap(), vec![2.0, 4.0]);
    println!("the lost adapter works again");
}

/// After a device is lost by a fault, a new device opens on the same adapter only — work that
/// goes on after a loss must not mix the bits of two adapters — and that device computes (in a
/// child process: the loss is remembered for the life of the process).
#[test]
fn work_after_a_loss_stays_on_its_adapter() {
    let mut backends: Vec<String> = gpus().iter().map(|g| format!("{:?}", g.info().backend).to_lowercase()).collect();
    backends.dedup();
    if backends.len() < 2 {
        eprintln!("one backend only: nothing else to refuse");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_that_loses_its_first_device", "--nocapture", "--test-threads=1"])
        .env("REVIVE_LOSE_DEVICE_AFTER", "1")
        .env("REVIVE_TEST_LOSS_CHILD", &backends[0])
        .env("REVIVE_TEST_LOSS_OTHER", &backends[1])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("refused another adapter") && said.contains("works again"), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
}
