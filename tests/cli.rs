//! The command line refuses what it would otherwise quietly ignore.

use std::process::Command;

/// `--delta` is global, but only the commands that load one model read it: an edit, a
/// session rebuilt by apply or an experiment given one would run on the base model instead of
/// the edited one the user named, so they refuse it, naming the file, before loading anything.
#[test]
fn commands_that_do_not_read_a_delta_refuse_one() {
    let runs: [&[&str]; 4] = [
        &["edit", "--subject", "Paris", "--prompt", "{} is in", "--target", " Italy", "--out", "/nonexistent/out"],
        &["apply", "--journal", "/nonexistent/session", "--out", "/nonexistent/out"],
        &["experiment", "--out", "/nonexistent/out"],
        &["journal", "/nonexistent/session"],
    ];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_revive")).arg("--delta").arg("/nonexistent/delta.safetensors").args(args).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} with --delta succeeded");
        assert!(err.contains("--delta /nonexistent/delta.safetensors") && err.contains("only generate"), "{args:?}: {err}");
    }
}
