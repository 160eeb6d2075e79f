//! The experiment's fact set (assets/facts/geo): its generator gives the same bytes twice and the
//! shipped files, and the retention set is a subset of the generator's candidates.
//!
//! The generator reads pinned PyPI wheels and a Debian package, so it needs the network; without
//! it the regeneration test is skipped unless REVIVE_REQUIRE_MODEL=1 (CI, which downloads the
//! model from PyPI anyway), where a failed download fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn geo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/facts/geo")
}

fn required() -> bool {
    std::env::var("REVIVE_REQUIRE_MODEL").as_deref() == Ok("1")
}

/// Runs make.py into `out`; None when it could not run here (no python3, no network) and the
/// test is not required.
fn make_into(out: &Path) -> Option<()> {
    std::fs::create_dir_all(out).unwrap();
    let run = Command::new("python3").arg(geo().join("make.py")).arg("--out").arg(out).output();
    match run {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            let why = format!("make.py failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr));
            assert!(!required(), "{why}");
            eprintln!("skipped: {why}");
            None
        }
        Err(e) => {
            assert!(!required(), "python3 could not run: {e}");
            eprintln!("skipped: python3 could not run: {e}");
            None
        }
    }
}

#[test]
fn the_generator_gives_the_shipped_bytes_twice() {
    let tmp = std::env::temp_dir().join(format!("revive-dataset-{}", std::process::id()));
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let made = make_into(&a).is_some() && make_into(&b).is_some();
    let compared = made.then(|| compare_runs(&a, &b));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(Err(why)) = compared {
        panic!("{why}");
    }
}

fn compare_runs(a: &Path, b: &Path) -> Result<(), String> {
    for file in ["edits.json.gz", "candidates.json"] {
        let first = std::fs::read(a.join(file)).unwrap();
        if first != std::fs::read(b.join(file)).unwrap() {
            return Err(format!("{file}: two runs of make.py differ"));
        }
        if first != std::fs::read(geo().join(file)).unwrap() {
            return Err(format!("{file}: make.py no longer gives the shipped file"));
        }
    }
    Ok(())
}

#[test]
fn the_retention_set_is_the_candidates_in_order() {
    let read = |file: &str| revive::eval::retention::load_facts(&geo().join(file)).unwrap();
    let (candidates, known) = (read("candidates.json"), read("known.json"));
    assert!(known.len() >= 500, "{} known facts", known.len());
    // Every known fact is a candidate, in the candidates' order, each prompt once.
    let mut at = 0;
    let mut prompts = std::collections::HashSet::new();
    for k in &known {
        let found = candidates[at..].iter().position(|c| c == k).unwrap_or_else(|| panic!("{k:?} is not a candidate after position {at}"));
        at += found + 1;
        assert!(prompts.insert(k.prompt.as_str()), "{:?} is in the retention set twice", k.prompt);
        assert!(k.relation_id.is_some(), "{k:?}: no relation");
        assert!(k.answer.starts_with(' ') && k.answer.trim().len() == k.answer.len() - 1, "{k:?}: the answer is one leading space and a word");
    }
    // The controls are relations no edit record has, and no record's answer is a control answer.
    let edits = revive::edit::request::load_requests(&geo().join("edits.json.gz")).unwrap();
    let edited: std::collections::HashSet<&str> = edits.iter().filter_map(|r| r.relation_id.as_deref()).collect();
    let answers: std::collections::HashSet<&str> = edits.iter().flat_map(|r| [Some(r.target_new.as_str()), r.target_true.as_deref()]).flatten().collect();
    assert!(edited.contains("P17") && answers.contains(" China"), "the edit records' fields were not read");
    for relation in ["P36", "P246", "P461"] {
        assert!(!edited.contains(relation), "{relation} is edited");
        let of: Vec<&revive::eval::retention::Fact> = known.iter().filter(|k| k.relation_id.as_deref() == Some(relation)).collect();
        assert!(!of.is_empty(), "no known fact of {relation}");
        for k in of {
            assert!(!answers.contains(k.answer.as_str()), "{k:?}: an edit uses this answer");
        }
    }
}
