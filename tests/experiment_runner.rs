//! `revive experiment` end to end, as a user runs it: the binary on a tiny model saved as a
//! Hugging Face directory (random weights, a character-level tokenizer so that the WordNet
//! corpus gives C0 real keys), once per backend (`--backend vulkan`, `gl`: the binary picks the
//! adapter, so a machine with two Vulkan adapters runs one of them). It writes every file it
//! promises; killed with SIGKILL at several points and run again, it continues (no batch done
//! twice) and ends with the same CSV as an uninterrupted run; one arm run alone (`--arm`) and
//! merged (`--merge`) with the other gives that CSV too.

mod common;
use common::*;
use revive::edit::hparams::{BatchHparams, BatchMethod, Templates};
use revive::model::random::random_weights;
use revive::model::safetensors::{save_dir, SaveDtype};
use revive::model::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config() -> Config {
    // Room for the corpus' 128-token sequences; the tokenizer below fills the 97 ids.
    Config { ffn_hidden: 120, max_seq_len: 256, ..Config::tiny_llama() }
}

/// A tokenizer.json whose tokens are single characters: "<unk>", a newline and printable ASCII
/// (97 ids, the tiny model's vocabulary), joined back without spaces.
fn char_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("\n".into(), 1.into());
    for (i, c) in (b' '..=b'~').enumerate() {
        vocab.insert((c as char).to_string(), (i + 2).into());
    }
    assert_eq!(vocab.len(), config().vocab_size);
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

const NAMES: [&str; 8] = ["Ada", "Bea", "Cyd", "Dov", "Eli", "Fay", "Gus", "Hal"];
const CITIES: [&str; 4] = ["Oslo", "Rome", "Lima", "Kyiv"];

/// Eight CounterFact records: "{name} was born in" a city, rewritten to the next city.
fn counterfact_records() -> serde_json::Value {
    let records: Vec<serde_json::Value> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (old, new) = (CITIES[i % 4], CITIES[(i + 1) % 4]);
            let others: Vec<String> = NAMES.iter().filter(|n| n != &name).take(5).map(|n| format!("{n} was born in")).collect();
            serde_json::json!({
                "case_id": i,
                "requested_rewrite": {"prompt": "{} was born in", "subject": name, "target_new": {"str": new}, "target_true": {"str": old}, "relation_id": "P19"},
                "paraphrase_prompts": [format!("Yes. {name} was born in"), format!("The birthplace of {name} is")],
                "neighborhood_prompts": others,
                "generation_prompts": [format!("{name} grew up in"), format!("{name} is from")],
                "portability": [{"prompt": format!("The city where {name} was born is"), "answer": new}],
            })
        })
        .collect();
    serde_json::Value::Array(records)
}

fn known_facts() -> serde_json::Value {
    serde_json::json!([
        {"prompt": "Ivy was born in", "answer": " Oslo", "relation_id": "P19"},
        {"prompt": "Jo lives in", "answer": " Rome", "relation_id": "P551"},
        {"prompt": "Kim speaks", "answer": " Welsh", "relation_id": "P1412"},
    ])
}

const PROSE: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. \
However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed \
in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters.\n";

/// MEMIT on layers 0-1 with a short target optimisation; λ small enough that a random model's
/// keys move its outputs.
fn hparams() -> BatchHparams {
    BatchHparams {
        method: BatchMethod::Memit,
        layers: vec![0, 1],
        v_steps: 6,
        v_lr: 0.5,
        v_weight_decay: 1e-3,
        clamp_norm_factor: 100.0,
        kl_factor: 0.0625,
        nll_stop: 0.05,
        target_loss: Default::default(),
        templates: Templates { prefixes: vec![], per_prefix: 0, length: 0, seed: 0 },
        mom2_tokens: 2048,
        mom2_update_weight: Some(2.0),
        nullspace_threshold: None,
        l2: None,
        keep_fraction: None,
        alpha: None,
        upper_bound: None,
        max_iterations: None,
        neuron_threshold: None,
        why: Default::default(),
    }
}

/// The model directory and input files under `root`.
fn write_inputs(root: &Path) {
    let model = root.join("model");
    save_dir(&random_weights(&config(), 21), &model, SaveDtype::F32, None).unwrap();
    std::fs::write(model.join("tokenizer.json"), char_tokenizer_json()).unwrap();
    std::fs::write(root.join("edits.json"), counterfact_records().to_string()).unwrap();
    std::fs::write(root.join("known.json"), known_facts().to_string()).unwrap();
    std::fs::write(root.join("prose.txt"), PROSE.repeat(4)).unwrap();
    std::fs::write(root.join("memit.json"), serde_json::to_string(&hparams()).unwrap()).unwrap();
}

/// The first adapter's backend, and a fresh directory named `name` (per process) holding the
/// inputs.
fn scratch(name: &str) -> (String, PathBuf) {
    let backend = format!("{:?}", gpus()[0].info().backend).to_lowercase();
    let root = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    write_inputs(&root);
    (backend, root)
}

/// `revive experiment` over the inputs in `root` into `out`: 8 edits in batches of 2, a
/// checkpoint every 4, MEMIT without and with REVIVE, every measure on; C0 and the guards'
/// bases cached in `root/<cache>`.
fn experiment(root: &Path, backend: &str, out: &Path, cache: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
    let path = |p: &str| root.join(p).display().to_string();
    c.args(["--backend", backend, "experiment", "-m", &path("model"), "--methods", "memit", "--revive", "none,0.5"])
        .args(["--edits", &path("edits.json"), "--known", &path("known.json"), "--prose", &path("prose.txt"), "--hparams", &path("memit.json")])
        .args(["--batch", "2", "--every", "4", "--sample", "0", "--ppl-tokens", "256", "--agreement-prompts", "4"])
        .args(["--fluency-prompts", "2", "--fluency-tokens", "8", "--out", &out.display().to_string()])
        .args(extra)
        // Its own cache: C0 and the guards' bases are measured in this test, not found.
        .env("REVIVE_CACHE", root.join(cache))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `c` to its end; what it printed.
fn run_to_end(mut c: Command, what: &str) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: cannot start revive: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: revive failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CSV without its one column of wall-clock time (edit_seconds), which no two runs share.
fn csv_without_time(dir: &Path) -> Result<Vec<String>, String> {
    let path = dir.join("results.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header: Vec<&str> = text.lines().next().unwrap_or("").split(',').collect();
    let t = header.iter().position(|h| *h == "edit_seconds").ok_or("results.csv has no edit_seconds column")?;
    Ok(text.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| *i != t).map(|(_, x)| x).collect::<Vec<_>>().join(",")).collect())
}

/// Batches journaled and checkpoints written, over both arms: how far a run got.
fn progress(out: &Path) -> usize {
    let mut n = 0;
    for arm in ["memit-none", "memit-0.5"] {
        let dir = out.join(arm);
        n += std::fs::read_dir(dir.join("journal")).map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with("-batch.safetensors")).count()).unwrap_or(0);
        n += std::fs::read_to_string(dir.join("checkpoints.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    }
    n
}

#[test]
fn the_experiment_writes_its_files_and_resumes_after_kill_9_to_the_same_csv() {
    let mut backends: Vec<String> = gpus().iter().map(|g| format!("{:?}", g.info().backend).to_lowercase()).collect();
    backends.sort();
    backends.dedup();
    let mut failures = vec![];
    for backend in backends {
        if let Err(e) = kill_and_resume(&backend) {
            failures.push(format!("[{backend}] {e}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn kill_and_resume(backend: &str) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("revive-experiment-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    write_inputs(&root);

    // Uninterrupted.
    let whole = root.join("whole");
    let printed = run_to_end(experiment(&root, backend, &whole, "cache", &[]), "the uninterrupted run")?;
    if !printed.contains("[batch 1/4]") {
        return Err(format!("the run does not print its batches as this test expects:\n{printed}"));
    }
    let mut files: Vec<PathBuf> = ["experiment.json", "results.csv", "results.json", "table.md", "curves.svg", "curves.png"].iter().map(|f| whole.join(f)).collect();
    for arm in ["memit-none", "memit-0.5"] {
        for f in ["checkpoints.jsonl", "reference-logprobs.safetensors", "reference-locality.json", "session.json"] {
            files.push(whole.join(arm).join(f));
        }
    }
    if let Some(missing) = files.iter().find(|f| std::fs::metadata(f).map_or(true, |m| m.len() == 0)) {
        return Err(format!("the experiment did not write {}", missing.display()));
    }
    let want = csv_without_time(&whole)?;
    // A header and checkpoints at 0, 4 and 8 edits for each arm, every measure present after
    // edits.
    if want.len() != 7 {
        return Err(format!("{} CSV lines, expected 7:\n{}", want.len(), want.join("\n")));
    }
    let header: Vec<&str> = want[0].split(',').collect();
    for row in want[1..].iter().filter(|r| r.split(',').nth(1) != Some("0")) {
        for col in ["efficacy_all", "perplexity", "kl", "fluency", "known_total", "max_leak", "locality_all", "portability_all"] {
            let i = header.iter().position(|h| *h == col).ok_or(format!("no column {col}"))?;
            let v = row.split(',').nth(i).unwrap_or("");
            if v.is_empty() || v.eq_ignore_ascii_case("nan") {
                return Err(format!("column {col} is '{v}' in {row}"));
            }
        }
    }

    // Killed (SIGKILL) six times, in a cache of its own: first 50-500 ms after the start
    // (setup: C0 and the guards' bases being measured and cached, or the first batch), then at
    // growing progress, each a random 0-150 ms later, so the kills land in different phases
    // (targets, solves, a journal write, a checkpoint). Each run continues what the one before
    // left; the last runs to the end.
    let killed = root.join("killed");
    let mut r = rng(5);
    for (round, at) in [0usize, 1, 3, 6, 9, 11].into_iter().enumerate() {
        // What a run that ends on its own said: the failure is then readable.
        let log = root.join(format!("round-{round}.log"));
        let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = experiment(&root, backend, &killed, "cache-killed", &[]).stdout(Stdio::null()).stderr(stderr).spawn().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while progress(&killed) < at {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("round {round}: the run ended ({status}) before progress {at}:\n{said}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("round {round}: no progress {at} in 10 minutes"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let delay = if at == 0 { rand::Rng::random_range(&mut r, 50..500) } else { rand::Rng::random_range(&mut r, 0..150) };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        if child.wait().unwrap().success() {
            return Err(format!("round {round}: the run finished before the kill"));
        }
    }
    // By progress 11 the first arm is done and the second has its first two batches: the last
    // run continues from there and does neither again.
    let printed = run_to_end(experiment(&root, backend, &killed, "cache-killed", &[]), "the run after the last kill")?;
    if printed.contains("[batch 1/4]") || printed.contains("[batch 2/4]") {
        return Err(format!("the run after the kills did a journaled batch again:\n{printed}"));
    }
    let got = csv_without_time(&killed)?;
    if got != want {
        return Err(format!("the resumed run's CSV differs:\n{}\nuninterrupted:\n{}", got.join("\n"), want.join("\n")));
    }

    // The GPU lost mid-run (a device destroyed after a submit, as a driver reset would): the
    // arm goes on from its journal on a new device by itself, to the same CSV.
    let lost = root.join("lost");
    let out = experiment(&root, backend, &lost, "cache", &[]).env("REVIVE_LOSE_DEVICE_AFTER", LOSE_AFTER.to_string()).output().map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !err.contains("going on from the journal on a new device (retry 1 of 3)") {
        return Err(format!("the run that lost its GPU did not go on by itself ({}):\n{err}", out.status));
    }
    // The hyper-parameters' C0 of 2,048 tokens over four batches: warned, as --cov-tokens is.
    if !err.contains("C0 from 2048 corpus tokens") {
        return Err(format!("a small C0 from --hparams was not warned:\n{err}"));
    }
    let got = csv_without_time(&lost)?;
    if got != want {
        return Err(format!("the CSV of the run that lost its GPU differs:\n{}\nuninterrupted:\n{}", got.join("\n"), want.join("\n")));
    }

    // One arm alone, its batches not scored (only the checkpoints are), merged with the other
    // arm of the uninterrupted run.
    let split = root.join("split");
    let said = run_to_end(experiment(&root, backend, &split, "cache", &["--arm", "memit/0.5", "--batch-metrics", "none"]), "the run of one arm")?;
    if !said.contains("not scored: --batch-metrics none") || said.contains("→ after efficacy") {
        return Err(format!("--batch-metrics none: the batches were scored or said nothing:\n{said}"));
    }
    let merged = root.join("merged");
    let c = experiment(&root, backend, &merged, "cache", &["--merge", &whole.join("memit-none").display().to_string(), &split.display().to_string()]);
    run_to_end(c, "the merge")?;
    let got = csv_without_time(&merged)?;
    if got != want {
        return Err(format!("the merged CSV differs:\n{}\nuninterrupted:\n{}", got.join("\n"), want.join("\n")));
    }
    refusals(&root, backend, &whole, &split)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// What must not run or merge: an arm another process holds (a relaunch while the first still
/// runs), the same arm from two places, arms run with other settings.
fn refusals(root: &Path, backend: &str, whole: &Path, split: &Path) -> Result<(), String> {
    let refused = |c: &mut Command, what: &str, says: &[&str]| -> Result<(), String> {
        let out = c.output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !says.iter().all(|s| err.contains(s)) {
            return Err(format!("{what}: not refused with {says:?} ({}):\n{err}", out.status));
        }
        Ok(())
    };
    let held = revive::store::lock_dir(&whole.join("memit-none"), false).map_err(|e| e.to_string())?;
    refused(&mut experiment(root, backend, whole, "cache", &["--arm", "memit/none"]), "an arm in use", &["in use by another revive process"])?;
    drop(held);
    let twice = root.join("merged-twice");
    refused(&mut experiment(root, backend, &twice, "cache", &["--merge", &whole.display().to_string(), &split.display().to_string()]), "one arm from two places", &["arm memit-0.5 is in both"])?;
    // The split arm's experiment as if it had sampled other requests for its scores.
    let other = root.join("other");
    std::fs::create_dir_all(&other).map_err(|e| e.to_string())?;
    copy_dir(&split.join("memit-0.5"), &other.join("memit-0.5"))?;
    let mut plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(split.join("experiment.json")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    plan["sample"] = serde_json::json!(3);
    std::fs::write(other.join("experiment.json"), plan.to_string()).map_err(|e| e.to_string())?;
    let mixed = root.join("merged-mixed");
    refused(&mut experiment(root, backend, &mixed, "cache", &["--merge", &whole.join("memit-none").display().to_string(), &other.display().to_string()]), "arms of other settings", &["ran with other settings", "sample: 0 against 3"])?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for e in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest)?;
        } else {
            std::fs::copy(&p, &dest).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// `revive edit --method memit` over the inputs in `root`: 2 edits in one batch into `out`,
/// nothing saved, with `extra` flags.
fn memit_session(root: &Path, backend: &str, out: &Path, extra: &[&str]) -> Command {
    let path = |p: &str| root.join(p).display().to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
    c.args(["--backend", backend, "edit", "-m", &path("model"), "--method", "memit", "--hparams", &path("memit.json")])
        .args(["--edits", &path("edits.json"), "--limit", "2", "--batch", "2", "--save", "none", "--out", &out.display().to_string()])
        .args(extra)
        .env("REVIVE_CACHE", root.join("cache"));
    c
}

/// The `session.json` a session wrote in `dir`.
fn session_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).unwrap()).unwrap()
}

/// A batch whose update is past `--max-update` is refused naming why, nothing is journaled, and
/// the same session resumed with a looser bound writes it.
#[test]
fn a_refused_batch_goes_through_on_resume_with_a_looser_bound() {
    let (backend, root) = scratch("revive-max-update");
    let out = root.join("session");
    let first = memit_session(&root, &backend, &out, &["--max-update", "1e-9"]).output().unwrap();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success() && err.contains("explodes") && err.contains("w_down"), "{err}");
    let mut resume = Command::new(env!("CARGO_BIN_EXE_revive"));
    resume.args(["--backend", &backend, "edit", "--resume", &out.display().to_string(), "--max-update", "2"]).env("REVIVE_CACHE", root.join("cache"));
    let again = resume.output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && err.contains("updates bounded at 2"), "{err}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("[batch 1/1]"), "{}", String::from_utf8_lossy(&again.stdout));
    let _ = std::fs::remove_dir_all(&root);
}

/// `--target-loss` reaches the hyper-parameters a session records (and so its resume), and a
/// session without it keeps the design's loss.
#[test]
fn the_target_loss_flag_reaches_the_session() {
    let (backend, root) = scratch("revive-target-loss");
    for (flag, want) in [(Some("published"), Some("published")), (None, None)] {
        let out = root.join(format!("session-{}", flag.unwrap_or("default")));
        run_to_end(memit_session(&root, &backend, &out, &flag.map(|f| vec!["--target-loss", f]).unwrap_or_default()), "revive edit").unwrap();
        let found = find_key(&session_json(&out), "target_loss");
        assert_eq!(found.as_ref().and_then(|v| v.as_str()), want, "{flag:?}: target_loss {found:?} in session.json");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `--targets-through-guard` (edit) and a `τ+through` arm (experiment) reach the session a
/// run records, and so its resume; without a guard to go through, the flag is refused before
/// any work.
#[test]
fn targets_through_the_guard_reach_the_session() {
    let (backend, root) = scratch("revive-through-guard");
    let path = |p: &str| root.join(p).display().to_string();
    let refused = memit_session(&root, &backend, &root.join("no-guard"), &["--targets-through-guard"]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--targets-through-guard needs REVIVE's guard"), "{err}");
    assert!(!root.join("no-guard").join("session.json").exists(), "a refused session was written");
    let through = |dir: &Path| session_json(dir)["targets_through_guard"].as_bool();
    let out = root.join("edit-through");
    run_to_end(memit_session(&root, &backend, &out, &["--revive", "0.5", "--targets-through-guard"]), "revive edit").unwrap();
    assert_eq!(through(&out), Some(true));
    let out = root.join("experiment");
    for arm in ["memit/0.5+through", "memit/0.5"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
        c.args(["--backend", &backend, "experiment", "-m", &path("model"), "--methods", "memit", "--revive", "none,0.5,0.5+through", "--arm", arm])
            .args(["--edits", &path("edits.json"), "--limit", "2", "--known", &path("known.json"), "--prose", &path("prose.txt"), "--hparams", &path("memit.json")])
            .args(["--batch", "2", "--every", "2", "--sample", "0", "--ppl-tokens", "256", "--agreement-prompts", "2", "--fluency-prompts", "1", "--fluency-tokens", "4", "--no-spectral"])
            .args(["--out", &out.display().to_string()])
            .env("REVIVE_CACHE", root.join("cache"));
        run_to_end(c, "revive experiment").unwrap();
    }
    assert_eq!(through(&out.join("memit-0.5+through")), Some(true));
    assert_eq!(through(&out.join("memit-0.5")), Some(false));
    let _ = std::fs::remove_dir_all(&root);
}

/// The first value under `key` anywhere in a JSON document.
fn find_key(v: &serde_json::Value, key: &str) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m.get(key).cloned().or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// `--dry-run` times one batch and one checkpoint of the first arm, prints an estimate for the
/// whole plan with the one-time pipeline builds set apart, and leaves no experiment behind.
#[test]
fn the_dry_run_estimates_the_plan_and_writes_no_experiment() {
    let (backend, root) = scratch("revive-dry-run-test");
    let out = root.join("exp");
    let printed = run_to_end(experiment(&root, &backend, &out, "cache", &["--dry-run"]), "revive experiment --dry-run").unwrap();
    // 8 requests in batches of 2, a checkpoint every 4: 4 batches, checkpoints at 0, 4 and 8.
    assert!(printed.contains("4 batches and 3 checkpoints per arm"), "{printed}");
    assert!(printed.contains("for the 2 arms"), "{printed}");
    let line = printed.lines().find(|l| l.starts_with("building pipelines: ")).unwrap_or_else(|| panic!("no pipeline line in:\n{printed}"));
    // A fresh process: its first batch builds the kernels of the targets' backward pass.
    let first: u64 = line["building pipelines: ".len()..].split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(first > 0, "{line}");
    assert!(!out.join("memit-none").join("checkpoints.jsonl").exists() && !out.join("results.csv").exists(), "the dry run left an experiment in {}", out.display());
    let _ = std::fs::remove_dir_all(&root);
}

/// Tensors by name: (shape, bytes).
type Tensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)>;

/// The tensors of a session's `delta.safetensors`.
fn delta_tensors(dir: &Path) -> Result<Tensors, String> {
    let path = dir.join("delta.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(st.tensors().into_iter().map(|(name, t)| (name, (t.shape().to_vec(), t.data().to_vec()))).collect())
}

/// `revive edit` of six requests in batches of 2 over the inputs in `root`, the changed
/// matrices saved, its own cache; `lose_after` loses the GPU after that many submits.
fn six_edits(root: &Path, backend: &str, out: &Path, lose_after: Option<u64>, extra: &[&str]) -> Command {
    let path = |p: &str| root.join(p).display().to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
    c.args(["--backend", backend, "edit", "-m", &path("model"), "--method", "memit", "--hparams", &path("memit.json")])
        .args(["--edits", &path("edits.json"), "--limit", "6", "--batch", "2", "--save", "delta", "--out", &out.display().to_string()])
        .args(extra)
        .env("REVIVE_CACHE", root.join("cache"))
        .env_remove("REVIVE_LOSE_DEVICE_AFTER");
    if let Some(n) = lose_after {
        c.env("REVIVE_LOSE_DEVICE_AFTER", n.to_string());
    }
    c
}

/// The submits the device of `run` made in its life (the runtime's debug line when it closes).
fn submits_of(mut run: Command) -> u64 {
    let out = run.env("RUST_LOG", "revive::gpu=debug").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines().find_map(|l| l.split("closed after ").nth(1)?.strip_suffix(" submits")?.parse().ok()).unwrap_or_else(|| panic!("the device did not say how many submits it made:\n{log}"))
}

/// A session whose GPU is lost mid-run (`REVIVE_LOSE_DEVICE_AFTER` destroys the device after a
/// submit, as a driver reset or a watchdog would) goes on from its journal on a new device by
/// itself — the batches journaled before the loss are replayed, not edited again — and ends
/// with the weights of a run that never lost it, bit for bit. With `--gpu-retries 0` it stops
/// with an error that names the loss and how to go on, and `--resume` ends with the same
/// weights.
#[test]
fn a_session_that_loses_its_gpu_goes_on_to_the_same_weights() {
    let (backend, root) = scratch("revive-device-lost");
    let whole = root.join("whole");
    run_to_end(six_edits(&root, &backend, &whole, None, &[]), "the uninterrupted session").unwrap();
    let want = delta_tensors(&whole).unwrap();
    assert!(!want.is_empty(), "the session saved no matrices");
    // The loss lands halfway through the submits of the same session with C0 and the guards
    // cached, as the runs below have them: in its second batch of three on any adapter.
    let submits = submits_of(six_edits(&root, &backend, &root.join("counted"), None, &[]));
    let lose_after = submits / 2;

    let lost = root.join("lost");
    let out = six_edits(&root, &backend, &lost, Some(lose_after), &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the session did not recover from the loss ({}):\n{err}", out.status);
    assert!(err.contains("was lost") && err.contains("going on from the journal on a new device (retry 1 of 3)"), "the loss was not met or not said:\n{err}");
    assert!(err.contains("resumed: 1 batches replayed") || err.contains("resumed: 2 batches replayed"), "the loss at submit {lose_after} of {submits} did not fall after the first batch and before the last:\n{err}");
    assert_eq!(delta_tensors(&lost).unwrap(), want, "the recovered session's weights differ from the uninterrupted run's");

    let stopped = root.join("stopped");
    let out = six_edits(&root, &backend, &stopped, Some(lose_after), &["--gpu-retries", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a session without retries went on after the loss:\n{err}");
    assert!(err.contains("was lost") && err.contains("--resume"), "the error does not say what happened and how to go on:\n{err}");
    assert!(!stopped.join("delta.safetensors").exists(), "a session stopped by the loss saved its weights");
    let path = stopped.display().to_string();
    let mut resume = Command::new(env!("CARGO_BIN_EXE_revive"));
    resume.args(["--backend", &backend, "edit", "--resume", &path]).env("REVIVE_CACHE", root.join("cache")).env_remove("REVIVE_LOSE_DEVICE_AFTER");
    run_to_end(resume, "the resume after the loss").unwrap();
    assert_eq!(delta_tensors(&stopped).unwrap(), want, "the resumed session's weights differ from the uninterrupted run's");

    // ROME edits one after another outside a session cannot go on: lost in the second of two
    // (three quarters through a counted run's submits), the error says what went and how to
    // keep such a sequence.
    let path = |p: &str| root.join(p).display().to_string();
    let rome = |out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
        c.args(["--backend", &backend, "edit", "-m", &path("model"), "--method", "rome", "--edits", &path("edits.json"), "--limit", "2", "--layer", "0"])
            .args(["--templates", "0", "--steps", "4", "--cov-tokens", "256", "--no-save", "--out", &path(out)])
            .env("REVIVE_CACHE", root.join("cache"))
            .env_remove("REVIVE_LOSE_DEVICE_AFTER");
        c
    };
    rome("rome-warm").output().unwrap();
    let submits = submits_of(rome("rome-counted"));
    let out = rome("rome").env("REVIVE_LOSE_DEVICE_AFTER", (submits * 3 / 4).to_string()).output().unwrap();
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("[1/2]"), "the loss at submit {} of {submits} came before the first edit ended:\n{said}\n{err}", submits * 3 / 4);
    assert!(!out.status.success() && err.contains("was lost") && err.contains("the 1 edit(s) finished before the loss") && err.contains("`--batch 1`"), "ROME after a loss:\n{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// The submit after which the experiment's test loses its GPU: early in a run whose setup and
/// eight batches take several hundred submits on lavapipe (C0 and the bases cached); wherever it
/// falls before the end, the run must go on by itself to the same CSV.
const LOSE_AFTER: u64 = 130;
