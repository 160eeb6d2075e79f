//! `REVIVE_PROFILE=1`: every dispatch is charged to its kernel, and `profile_since` reports what
//! a piece of work added (how `revive bench edit` attributes the targets' time on a GPU). Its
//! own test binary: the switch is read when a device opens, before any other test's device.

mod common;
use common::*;
use revive::gpu::Gpu;
use revive::ops::elementwise::add;
use revive::ops::matmul::matmul;

#[test]
fn profile_since_counts_the_dispatches_of_the_work_in_between() {
    // SAFETY: the only test of this binary, run before any device (or other thread) exists.
    unsafe { std::env::set_var("REVIVE_PROFILE", "1") };
    let mut failures = vec![];
    for g in Gpu::all() {
        let gpu = g.expect("the adapter opens").without_first_use_measurement();
        let run = || -> Result<(), String> {
            let mut r = rng(1);
            let x = ok(gpu.upload(&random_vec(&mut r, 12 * 7), &[12, 7]))?;
            let w = ok(gpu.upload(&random_vec(&mut r, 7 * 5), &[7, 5]))?;
            ok(add(&gpu, &x, &x))?;
            let before = gpu.profile();
            let counts = |p: &[revive::gpu::KernelTime]| p.iter().map(|k| k.dispatches).sum::<u64>();
            let stats = gpu.runtime_stats();
            for _ in 0..3 {
                ok(add(&gpu, &x, &x))?;
                ok(matmul(&gpu, &x, &w))?;
            }
            ok(gpu.sync())?;
            let since = gpu.profile_since(&before);
            let dispatched = (gpu.runtime_stats() - stats).dispatches;
            if counts(&since) != dispatched || dispatched < 6 {
                return Err(format!("profile_since counts {} dispatches, the runtime {dispatched}: {since:?}", counts(&since)));
            }
            if !since.windows(2).all(|w| w[0].ms >= w[1].ms) || since.iter().any(|k| !k.ms.is_finite() || k.ms < 0.0) {
                return Err(format!("not sorted by time, or a time is not a number: {since:?}"));
            }
            if gpu.profile_since(&gpu.profile()).iter().any(|k| k.dispatches > 0) {
                return Err("nothing ran, yet profile_since reports dispatches".into());
            }
            Ok(())
        };
        if let Err(e) = run() {
            failures.push(format!("[{}] {e}", gpu.label()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
