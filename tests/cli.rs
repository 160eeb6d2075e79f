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

/// `revive generate` with several prompts (`-p` and `--prompts FILE`) decodes them together and
/// writes `--json`: greedy, each continuation is what the prompt gives alone; a prompt file
/// without prompts is refused naming it. On the real model (CI fetches it).
#[test]
fn several_prompts_generate_as_each_alone() {
    let Some(model) = revive::testing::smollm2_for_tests() else { return };
    let dir = std::env::temp_dir().join(format!("revive-cli-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "The capital of France is\n\nThe mother tongue of Danielle Darrieux is\n").unwrap();
    let revive = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_revive")).args(["generate", "-m", model.to_str().unwrap(), "-n", "6"]).args(args).output().expect("runs");
    let json = dir.join("out.json");
    let out = revive(&["-p", "Water boils at", "--prompts", file.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = doc["generations"].as_array().unwrap();
    let prompts = ["Water boils at", "The capital of France is", "The mother tongue of Danielle Darrieux is"];
    assert_eq!(rows.len(), 3, "{doc}");
    for (row, prompt) in rows.iter().zip(prompts) {
        assert_eq!(row["prompt"], prompt);
        let alone = revive(&["-p", prompt]);
        assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
        let text = String::from_utf8_lossy(&alone.stdout).trim_end().to_string();
        let together = format!("{prompt}{}", row["continuation"].as_str().unwrap());
        assert_eq!(together.trim_end(), text, "{prompt:?}: together {together:?}, alone {text:?}");
        assert_eq!(row["ids"].as_array().unwrap().len(), 6, "{row}");
    }
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n \n").unwrap();
    let refused = revive(&["--prompts", empty.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("empty.txt") && err.contains("no prompts"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ROME edit outside a session saves the whole model (a directory, or a GGUF with
/// `--save gguf`): `--save delta`, a session's, is refused before the model is loaded, and so
/// is `--no-save` beside `--save`.
#[test]
fn a_single_edit_refuses_to_save_a_delta() {
    let out_dir = std::env::temp_dir().join(format!("revive-cli-save-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_revive"))
        .args(["edit", "-m", "/nonexistent/model.gguf", "--subject", "Paris", "--prompt", "{} is in", "--target", " Italy", "--save", "delta", "--out"])
        .arg(&out_dir)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--save delta is a session's"), "{err}");
    // --no-save beside a --save that says otherwise is refused, not resolved quietly.
    let out = Command::new(env!("CARGO_BIN_EXE_revive"))
        .args(["edit", "--subject", "Paris", "--prompt", "{} is in", "--target", " Italy", "--save", "gguf", "--no-save", "--out"])
        .arg(&out_dir)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot be used with"), "{err}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// With `--json`, `revive facts` and `revive score` write one JSON document to standard output
/// and nothing else (the summary line goes to standard error), so their output pipes into a
/// parser. On the real model (CI fetches it).
#[test]
fn json_output_is_one_document() {
    let Some(model) = revive::testing::smollm2_for_tests() else { return };
    let dir = std::env::temp_dir().join(format!("revive-cli-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let facts = dir.join("facts.json");
    std::fs::write(&facts, r#"[{"prompt": "The capital of France is", "answer": " Paris"}, {"prompt": "Water boils at", "answer": " 100"}]"#).unwrap();
    let runs: [&[&str]; 2] = [&["facts", "--facts", facts.to_str().unwrap(), "--json"], &["score", "-p", "The capital of France is", "-c", " Paris", "--json"]];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_revive")).args(&args[..1]).args(["-m", model.to_str().unwrap()]).args(&args[1..]).output().expect("runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        match args[0] {
            "facts" => {
                let rows = doc.as_array().unwrap();
                assert_eq!(rows.len(), 2, "{doc}");
                assert!(rows.iter().all(|r| r["logp"].as_f64().is_some_and(|l| l.is_finite() && l <= 0.0)), "{doc}");
                assert!(String::from_utf8_lossy(&out.stderr).contains("/2 correct"));
            }
            _ => assert!(doc["sum"].as_f64().is_some_and(|s| s.is_finite() && s < 0.0), "{doc}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-m smollm2` runs the cached file only if it is the published one (a flipped byte ran with
/// changed logits before); the hash is remembered beside it, and forgotten when the file changes.
/// Other paths: a safetensors file is pointed to its directory, a device is not "missing".
#[test]
fn the_cached_model_is_the_published_one() {
    let cache = std::env::temp_dir().join(format!("revive-cli-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let file = cache.join(revive::model::fetch::SMOLLM2_FILE);
    let info = |model: &str| Command::new(env!("CARGO_BIN_EXE_revive")).args(["score", "-m", model, "--prompt", "The capital of France is", "--continuation", " Paris"]).env("REVIVE_CACHE", &cache).output().expect("runs");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    std::fs::write(&file, b"GGUF not the model").unwrap();
    let out = info("smollm2");
    assert!(!out.status.success() && stderr(&out).contains("is not the published file's") && stderr(&out).contains("revive setup"), "{}", stderr(&out));
    let published = revive::testing::smollm2_for_tests().filter(|p| revive::model::fetch::sha256_file(p).is_ok_and(|s| s == revive::model::fetch::SMOLLM2_SHA256));
    if let Some(real) = published {
        std::fs::copy(&real, &file).unwrap();
        let out = info("smollm2");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(cache.join(format!("{}.verified", revive::model::fetch::SMOLLM2_FILE)).exists());
        // Changed after it was verified, its modification time set back: refused all the same.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 1000;
        bytes[at] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        let out = info("smollm2");
        assert!(!out.status.success() && stderr(&out).contains("is not the published file's"), "{}", stderr(&out));
    }
    let st = cache.join("model.safetensors");
    std::fs::write(&st, b"x").unwrap();
    let out = info(st.to_str().unwrap());
    assert!(!out.status.success() && stderr(&out).contains("give the directory"), "{}", stderr(&out));
    let out = info("/dev/null");
    assert!(!out.status.success() && stderr(&out).contains("not a regular file"), "{}", stderr(&out));
    std::fs::remove_dir_all(&cache).unwrap();
}

/// Layers are checked against the model before anything runs: the shipped hyper-parameters are
/// SmolLM2's (layers 3–7 of 30), and a two-layer model given them is refused with the way out;
/// ROME takes one layer from `--layers` as from `--layer`, and refuses two; `--layer` with
/// `--layers` is refused. With its layer
/// given, a ROME edit of a Qwen2 GGUF (tests/data/qwen2-gguf) runs end to end and writes a
/// GGUF over it that reads back as the same architecture with that one matrix changed, and
/// says it ran with SmolLM2's hyper-parameters.
#[test]
fn edits_refuse_layers_the_model_does_not_have() {
    use revive::model::gguf::load_gguf;
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf/model.gguf");
    let dir = std::env::temp_dir().join(format!("revive-cli-layers-{}", std::process::id()));
    let revive = |method: &str, extra: &[&str], out: &str| {
        Command::new(env!("CARGO_BIN_EXE_revive"))
            .args(["edit", "-m", model.to_str().unwrap(), "--method", method, "--subject", "Walter", "--prompt", "Sir {} Elliot of", "--target", " Hall"])
            .args(["--templates", "0", "--steps", "4", "--cov-tokens", "2048", "--out", dir.join(out).to_str().unwrap()])
            .args(extra)
            .output()
            .expect("runs")
    };
    for (method, extra, want) in [
        ("rome", &[][..], "layer 5"),
        ("memit", &["--batch", "1"][..], "layer 3"),
        ("rome", &["--layers", "0,1"][..], "ROME edits one layer"),
        ("rome", &["--layers", "1", "--layer", "0"][..], "both name"),
        ("memit", &["--batch", "1", "--layers", "1", "--layer", "0"][..], "both name"),
    ] {
        let out = revive(method, extra, "refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{method} {extra:?} ran");
        assert!(err.contains(want) && (want.starts_with("layer ") == (err.contains("2 layers") && err.contains("--layers"))), "{method} {extra:?}: {err}");
    }
    let out = revive("rome", &["--layers", "1", "--revive", "0.5", "--save", "gguf"], "edited");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // It runs with SmolLM2's other settings, and says so.
    assert!(err.contains("SmolLM2-135M's hyper-parameters") && err.contains("--hparams") && err.contains("revive trace"), "{err}");
    let (base, _) = load_gguf(&model).unwrap();
    let (edited, _) = load_gguf(&dir.join("edited/model.gguf")).unwrap();
    assert_eq!(edited.config, base.config);
    let changed: Vec<&String> = base.tensors.iter().filter(|(n, t)| edited.tensors[*n] != **t).map(|(n, _)| n).collect();
    assert_eq!(changed, ["layers.1.w_down"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--save gguf` from a Hugging Face base whose tokenizer no GGUF can hold as llama.cpp reads it
/// (a SentencePiece vocabulary, its scores in a tokenizer.model) is refused before the edit
/// runs, not after: nothing is edited, nothing written.
#[test]
fn a_gguf_that_cannot_be_written_is_refused_before_the_edit() {
    use revive::model::gguf::load_gguf_bytes;
    use revive::model::random::random_weights;
    use revive::model::{Config, RopeStyle, Tok};
    let dir = std::env::temp_dir().join(format!("revive-cli-spm-{}", std::process::id()));
    let w = random_weights(&Config { vocab_size: 259, rope_style: RopeStyle::Adjacent, ..Config::tiny_llama() }, 7);
    let (w, meta) = load_gguf_bytes(revive::fuzz::sentencepiece_gguf(&w).unwrap(), "spm.gguf").unwrap();
    let tok = Tok::from_gguf(&meta, "spm.gguf").unwrap();
    revive::model::load::save(&w, &tok, &dir.join("hf"), revive::model::safetensors::SaveDtype::F32).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_revive"))
        .args(["edit", "-m", dir.join("hf").to_str().unwrap(), "--method", "rome", "--layer", "1", "--subject", "he", "--prompt", "{} is", "--target", " t"])
        .args(["--templates", "0", "--steps", "2", "--cov-tokens", "512", "--save", "gguf", "--out", dir.join("out").to_str().unwrap()])
        .output()
        .expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && stderr.contains("SentencePiece") && stderr.contains("tokenizer.json"), "{stderr}");
    assert!(!stdout.contains("[1/1]") && !dir.join("out/model.gguf").exists(), "the edit ran: {stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `revive trace` on a model of two layers: one fact writes its token × layer table for each
/// kind (JSON and the plot's SVG and PNG); `--suggest` writes hyper-parameters at the layers its
/// MLP trace peaks at, which `revive edit --hparams` takes (and refuses without that trace); `--edits` traces only the facts the model knows (its top token is
/// the true answer) and refuses a file without one, naming it; a subject not in its prompt is
/// an error.
#[test]
fn trace_writes_its_tables_and_refuses_facts_the_model_does_not_know() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf/model.gguf");
    let dir = std::env::temp_dir().join(format!("revive-cli-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let revive = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_revive")).args(["trace", "-m", model.to_str().unwrap(), "--samples", "2", "--window", "2"]).args(args).output().expect("runs");
    let (json, plot) = (dir.join("one.json"), dir.join("one.svg"));
    let out = revive(&["--subject", "Walter", "--prompt", "Sir {} Elliot of", "--json", json.to_str().unwrap(), "--plot", plot.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(plot.exists() && plot.with_extension("png").exists());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let fact = &doc["facts"][0];
    let tokens = fact["tokens"].as_array().unwrap().len();
    let traces = fact["traces"].as_array().unwrap();
    assert_eq!(traces.iter().map(|t| t["kind"].as_str().unwrap()).collect::<Vec<_>>(), ["hidden", "mlp", "attn"], "{doc}");
    for t in traces {
        let restored = t["restored"].as_array().unwrap();
        assert_eq!(restored.len(), 2, "{t}");
        assert!(restored.iter().all(|row| row.as_array().unwrap().len() == tokens && row.as_array().unwrap().iter().all(|p| p.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)))), "{t}");
        // "Walter" is one or more tokens after "Sir": the subject starts at token 1 or later.
        let [first, last] = [t["subject"][0].as_u64().unwrap(), t["subject"][1].as_u64().unwrap()];
        assert!(first >= 1 && first <= last && (last as usize) < tokens, "{t}");
    }
    assert_eq!(doc["average"].as_array().unwrap().len(), 3);
    assert!(doc["suggested"].is_null(), "{doc}");

    // --suggest: hyper-parameters at the layers the MLP trace points to, which an edit takes.
    let mlp = doc["average"].as_array().unwrap().iter().find(|a| a["kind"] == "mlp").unwrap();
    let effect: Vec<f64> = mlp["subject_last"].as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect();
    let best = effect.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let peak = effect.iter().position(|&e| e == best).unwrap();
    let (memit, rome, json2) = (dir.join("memit.json"), dir.join("rome.json"), dir.join("suggested.json"));
    let one_mlp = ["--subject", "Walter", "--prompt", "Sir {} Elliot of", "--kind", "mlp"];
    let out = revive(&[&one_mlp[..], &["--suggest", memit.to_str().unwrap(), "--json", json2.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // A window of 2 covers both layers: said so.
    assert!(err.contains("a window of 2 layers covers all 2 of this model's"), "{err}");
    // Said exactly where the best layer brings back under 5 % of what the corruption took.
    assert_eq!(effect.iter().any(|&e| e > 0.05 * (mlp["clean"].as_f64().unwrap() - mlp["corrupted"].as_f64().unwrap())), !err.contains("hardly tells the layers apart"), "{effect:?}: {err}");
    let hp = revive::edit::hparams::BatchHparams::load(&memit).unwrap();
    // MEMIT's defaults edit 5 layers; this model has 2: both.
    assert_eq!(hp.layers, [0, 1]);
    assert!(hp.why["layers"].contains("revive trace --suggest") && hp.why["layers"].contains("measured on SmolLM2-135M"), "{:?}", hp.why);
    let doc2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json2).unwrap()).unwrap();
    assert_eq!(doc2["suggested"]["layers"], serde_json::json!([0, 1]), "{doc2}");
    let out = revive(&[&one_mlp[..], &["--suggest", rome.to_str().unwrap(), "--method", "rome"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hp = revive::edit::hparams::RomeHparams::load(&rome).unwrap();
    assert_eq!(hp.layer, peak, "ROME's layer is the (first) peak of {effect:?}");
    let edit = Command::new(env!("CARGO_BIN_EXE_revive"))
        .args(["edit", "-m", model.to_str().unwrap(), "--method", "rome", "--hparams", rome.to_str().unwrap(), "--subject", "Walter", "--prompt", "Sir {} Elliot of", "--target", " Hall"])
        .args(["--templates", "0", "--steps", "4", "--cov-tokens", "2048", "--out", dir.join("edited").to_str().unwrap()])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&edit.stderr);
    assert!(edit.status.success() && !err.contains("SmolLM2-135M's hyper-parameters"), "{err}");
    let out = revive(&["--subject", "Walter", "--prompt", "Sir {} Elliot of", "--kind", "hidden,attn", "--suggest", memit.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("add mlp to --kind"), "{err}");

    // As a record, toward an answer the model does not give (a record's answer gets a leading
    // space, and this random model's top token has none): nothing known to trace, and said so.
    let record = |truth: &str| serde_json::json!({"subject": "Walter", "prompt": "Sir {} Elliot of", "target_new": " x", "target_true": truth});
    let edits = dir.join("edits.json");
    std::fs::write(&edits, serde_json::to_string(&vec![record(fact["target"].as_str().unwrap()), serde_json::json!({"subject": "Walter", "prompt": "Sir {} Elliot of", "target_new": " x"})]).unwrap()).unwrap();
    let out = revive(&["--edits", edits.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("0 of the first 2 facts traced (1 the model does not answer with its true answer, 1 without one)") && err.contains("edits.json") && err.contains("no fact the model knows"), "{err}");
    let out = revive(&["--subject", "Anne", "--prompt", "Sir {} Elliot of"]);
    assert!(out.status.success(), "a subject in its prompt: {}", String::from_utf8_lossy(&out.stderr));
    let out = revive(&["--subject", "Walter", "--prompt", "Sir Elliot of"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no '{}'"), "{err}");
    for (flag, value, want) in [("--samples", "0", "--samples must be at least 1"), ("--window", "0", "--window must be"), ("--noise", "NaN", "--noise NaN"), ("--noise", "-1", "--noise -1"), ("--kind", "heads", "unknown trace kind 'heads'")] {
        let out = Command::new(env!("CARGO_BIN_EXE_revive")).args(["trace", "-m", model.to_str().unwrap(), "--subject", "Walter", "--prompt", "Sir {} Elliot of", &format!("{flag}={value}")]).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{flag} {value}: {err}");
    }
    std::fs::write(&edits, "[{\"subject\": ").unwrap();
    let out = revive(&["--edits", edits.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("edits.json"), "bad JSON: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `revive trace --json` keeps each fact as it is traced: a run stopped part way (its file cut
/// back to the first fact, and a run killed with SIGKILL wherever it was) and resumed with
/// `--resume` ends with the facts and means of a run that was not stopped, bit for bit. A
/// resume with other settings, fewer facts or another fact first is refused, naming the file.
#[test]
fn an_interrupted_trace_resumes_to_the_same_tables() {
    use revive::cpu::model::CpuModel;
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf/model.gguf");
    let dir = std::env::temp_dir().join(format!("revive-cli-trace-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Facts this random model knows as a record states them: its top token, by a clear margin,
    // a word with a leading space that encodes back to itself.
    let m = revive::model::load::load(model.to_str().unwrap()).unwrap();
    let cpu = CpuModel::new(&m.weights);
    let mut records = vec![];
    for subject in ["Walter", "Anne", "Mary", "Charles", "Elizabeth", "Russell", "Kellynch", "Bath", "Wentworth", "Musgrove"] {
        for prompt in ["Sir {} Elliot of", "{} was", "The {} of", "Captain {} had", "{} Hall is in", "Lady {} said"] {
            let input = revive::eval::trace::trace_input(&m.tok, prompt, subject, 0).unwrap();
            let (logits, _) = cpu.forward(std::slice::from_ref(&input.ids), &Default::default());
            let last = logits[0].last().unwrap();
            let mut order: Vec<usize> = (0..last.len()).collect();
            order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
            let answer = m.tok.decode(&[order[0] as u32]).unwrap();
            if answer.starts_with(' ') && answer.trim().len() > 1 && last[order[0]] - last[order[1]] > 0.05 && m.tok.encode(&answer).unwrap().first() == Some(&(order[0] as u32)) {
                records.push(serde_json::json!({"subject": subject, "prompt": prompt, "target_new": " x", "target_true": answer}));
            }
        }
    }
    assert!(records.len() >= 3, "too few facts the model knows: {records:?}");
    records.truncate(5);
    let n = records.len();
    let edits = dir.join("edits.json");
    std::fs::write(&edits, serde_json::to_string(&records).unwrap()).unwrap();
    // The run's settings, each replaced where `extra` gives the flag again.
    let trace = |json: &std::path::Path, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_revive"));
        c.args(["trace", "-m", model.to_str().unwrap(), "--json", json.to_str().unwrap()]);
        for (flag, value) in [("--edits", edits.to_str().unwrap()), ("--samples", "24"), ("--window", "2")] {
            if !extra.contains(&flag) {
                c.args([flag, value]);
            }
        }
        c.args(extra);
        c
    };
    let read = |p: &std::path::Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let full = dir.join("full.json");
    let out = trace(&full, &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = read(&full);
    assert_eq!(want["facts"].as_array().unwrap().len(), n, "{}", String::from_utf8_lossy(&out.stderr));

    // Cut back to its first fact, as a run stopped after it leaves its file.
    let part = dir.join("part.json");
    let mut cut = want.clone();
    cut["facts"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&part, serde_json::to_string(&cut).unwrap()).unwrap();
    let out = trace(&part, &["--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(&format!("1 of the {n} facts traced already, {} to go", n - 1)), "{err}");
    assert_eq!((read(&part)["facts"].clone(), read(&part)["average"].clone()), (want["facts"].clone(), want["average"].clone()));

    // Killed wherever it is: what it wrote reads, and resumes to the same tables.
    let killed = dir.join("killed.json");
    // Killed once it has written two facts (or, were it that fast, after its end).
    let mut child = trace(&killed, &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    let written = || if killed.exists() { read(&killed)["facts"].as_array().unwrap().len() } else { 0 };
    while written() < 2 && start.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(killed.exists(), "nothing written in {:?}", start.elapsed());
    let kept = read(&killed)["facts"].as_array().unwrap().len();
    assert!((1..=n).contains(&kept), "{kept} facts kept");
    let out = trace(&killed, &["--resume"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((read(&killed)["facts"].clone(), read(&killed)["average"].clone()), (want["facts"].clone(), want["average"].clone()), "{kept} facts kept, then resumed");

    // Another trace is not resumed into this one.
    std::fs::write(&part, serde_json::to_string(&cut).unwrap()).unwrap();
    let other = dir.join("other.json");
    std::fs::write(&other, serde_json::to_string(&records.iter().rev().collect::<Vec<_>>()).unwrap()).unwrap();
    for (extra, why) in [
        (&["--samples", "23"][..], "cannot resume, it traced with"),
        (&["--window", "3"][..], "cannot resume, it traced with"),
        (&["--kind", "mlp"][..], "cannot resume, it traced with"),
        (&["--edits", other.to_str().unwrap()][..], "cannot resume, its fact 0"),
    ] {
        let out = trace(&part, &[&["--resume"][..], extra].concat()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why) && err.contains("part.json"), "{extra:?}: {err}");
    }
    std::fs::write(&part, serde_json::to_string(&want).unwrap()).unwrap();
    let out = trace(&part, &["--resume", "--limit", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("it holds {n} facts and this run traces 1")), "{err}");
    // One fact toward another answer.
    let one = dir.join("one.json");
    let fact = |extra: &[&str]| Command::new(env!("CARGO_BIN_EXE_revive")).args(["trace", "-m", model.to_str().unwrap(), "--subject", "Anne", "--prompt", "Captain {} had", "--samples", "2", "--json", one.to_str().unwrap()]).args(extra).output().unwrap();
    assert!(fact(&[]).status.success());
    let out = fact(&["--resume", "--target", " x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot resume, its fact 0") && err.contains("toward"), "{err}");
    let out = trace(&dir.join("none.json"), &["--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--resume: cannot read") && err.contains("none.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
