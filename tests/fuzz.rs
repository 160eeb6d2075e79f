//! The short fuzz run: every parser of outside data gets a few hundred mutated inputs from
//! fixed seeds (see src/fuzz.rs). No input may panic, every rejection must name the file, and no
//! single allocation may exceed a bound set by the input's size. The long mode is
//! `cargo run --release --example fuzz -- --seconds 600`.

#[path = "common/alloc.rs"]
mod alloc;

#[global_allocator]
static PEAK: alloc::Peak = alloc::Peak;

use std::time::Duration;

#[test]
fn every_parser_survives_mutated_inputs() {
    let work = std::env::temp_dir().join(format!("revive-fuzz-{}", std::process::id()));
    let targets = revive::fuzz::targets(&work).expect("seeds");
    let limits = revive::fuzz::Limits { reset: &alloc::reset, peak: &alloc::peak };
    // Panics are caught and counted; keep their default report out of the test output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = vec![];
    for (i, t) in targets.iter().enumerate() {
        let r = revive::fuzz::run(t, 1000 + i as u64, Duration::from_secs(6), 1000, &limits);
        println!("{:<14} {:>5} inputs, {:>5} accepted, {:>5} rejected, {:.1} s", r.target, r.inputs, r.accepted, r.rejected, r.seconds);
        assert!(r.inputs >= 20, "{}: only {} inputs ran", r.target, r.inputs);
        if !r.clean() {
            failures.push(format!("{}: bad seeds {:?}; panics {:?}; errors not naming {}: {:?}; oversized allocations {:?}", r.target, r.bad_seeds, r.panics, t.file, r.unnamed, r.oversized));
        }
    }
    std::panic::set_hook(hook);
    let _ = std::fs::remove_dir_all(&work);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
