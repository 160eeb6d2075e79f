//! Hugging Face checkpoints: tiny random Llama and GPT-2 models written by the real saver and
//! read back by the real loader give the same tensors and the same logits; GGUF-ordered Q/K
//! rows survive the conversion to rotate-half; broken directories give errors naming the file.

use revive::cpu::model::CpuModel;
use revive::model::probe::Probes;
use revive::model::random::random_weights;
use revive::model::safetensors::{load_dir, save_dir, SaveDtype};
use revive::model::{Config, RopeStyle};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("revive-st-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn max_logit_diff(a: &revive::model::Weights, b: &revive::model::Weights) -> f64 {
    let batch = vec![vec![3u32, 17, 5, 60, 2, 9, 11], vec![1u32, 2]];
    let (la, _) = CpuModel::new(a).forward(&batch, &Probes::default());
    let (lb, _) = CpuModel::new(b).forward(&batch, &Probes::default());
    la.iter().flatten().flatten().zip(lb.iter().flatten().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn llama_and_gpt2_round_trip_exactly_in_f32() {
    for config in [Config::tiny_llama(), Config::tiny_gpt2()] {
        let w = random_weights(&config, 1);
        let dir = tmp(&format!("{:?}", config.arch));
        save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
        let back = load_dir(&dir).unwrap();
        assert_eq!(back.config, w.config);
        assert_eq!(back.tensors, w.tensors, "{:?}", config.arch);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn gguf_rope_order_is_converted_for_transformers() {
    // The same network with Q/K rows in GGUF (adjacent-pair) order: saving permutes them to
    // rotate-half order, and the reloaded model computes the same logits.
    let mut config = Config::tiny_llama();
    config.rope_style = RopeStyle::Adjacent;
    let w = random_weights(&config, 2);
    let dir = tmp("adjacent");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let back = load_dir(&dir).unwrap();
    assert_eq!(back.config.rope_style, RopeStyle::Half);
    assert_ne!(back.tensors["layers.0.wq"], w.tensors["layers.0.wq"], "rows must be reordered");
    let diff = max_logit_diff(&w, &back);
    assert!(diff < 1e-9, "logits differ by {diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn half_precision_saves_load_close() {
    for (dtype, tol) in [(SaveDtype::F16, 1e-3), (SaveDtype::BF16, 8e-3)] {
        let w = random_weights(&Config::tiny_gpt2(), 3);
        let dir = tmp(&format!("{dtype:?}"));
        save_dir(&w, &dir, dtype, None).unwrap();
        let back = load_dir(&dir).unwrap();
        for (name, t) in &w.tensors {
            let b = &back.tensors[name];
            let worst = t.data.iter().zip(&b.data).map(|(x, y)| ((x - y) / x.abs().max(1e-2)).abs()).fold(0.0f32, f32::max);
            assert!(worst < tol, "{dtype:?} {name}: relative error {worst}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn broken_checkpoints_are_errors_naming_the_file() {
    let w = random_weights(&Config::tiny_llama(), 4);
    let dir = tmp("broken");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let model = dir.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();

    // Truncated at many points, and with bit flips in the header: errors, never panics.
    for cut in (0..bytes.len()).step_by(bytes.len() / 40).chain([1, 7, 8, 9, 100]) {
        std::fs::write(&model, &bytes[..cut]).unwrap();
        let r = std::panic::catch_unwind(|| load_dir(&dir));
        let e = r.expect("loader panicked on a truncated file").expect_err("truncated file accepted");
        assert!(e.to_string().contains("model.safetensors") || e.to_string().contains("missing"), "{e}");
    }
    let mut rng = revive::testing::rng(5);
    for _ in 0..60 {
        let mut b = bytes.clone();
        let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let at = rand::Rng::random_range(&mut rng, 0..header);
        b[at] ^= 1 << rand::Rng::random_range(&mut rng, 0..8);
        std::fs::write(&model, &b).unwrap();
        let r = std::panic::catch_unwind(|| load_dir(&dir));
        assert!(r.is_ok(), "loader panicked on a bit flip at byte {at}");
    }
    std::fs::write(&model, &bytes).unwrap();
    load_dir(&dir).unwrap();

    // config.json: bad JSON, unknown architecture, a shape that disagrees with the tensors.
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert!(load_dir(&dir).unwrap_err().to_string().contains("config.json"));
    std::fs::write(&cfg_path, cfg.replace("\"llama\"", "\"mamba\"")).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("mamba") && e.contains("config.json"), "{e}");
    std::fs::write(&cfg_path, cfg.replace("\"intermediate_size\": 75", "\"intermediate_size\": 76")).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("has shape") && e.contains("[76, 48]") && e.contains("'model.layers.0.mlp.up_proj.weight' (read as layers.0.w_up)"), "{e}");
    std::fs::write(&cfg_path, cfg.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4")).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("layers.3"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Settings that used to load silently and give NaN or other outputs: wrong types, values out
/// of range, fewer layers than the tensors hold. Each is an error naming the key or tensor.
#[test]
fn inconsistent_settings_are_refused_naming_the_key() {
    let w = random_weights(&Config::tiny_llama(), 6);
    let dir = tmp("settings");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let with = |key: &str, v: serde_json::Value| {
        let mut c = cfg.clone();
        c[key] = v;
        std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
        load_dir(&dir).map(|_| ()).map_err(|e| e.to_string())
    };
    for (key, v) in [
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("rms_norm_eps", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!(0.0)),
        ("rope_theta", serde_json::json!("100000")),
        ("tie_word_embeddings", serde_json::json!("true")),
        ("num_key_value_heads", serde_json::json!("2")),
        ("max_position_embeddings", serde_json::json!(-5)),
        ("eos_token_id", serde_json::json!("2")),
        // Scalings this runtime does not apply, and ones it does, given wrong.
        ("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})),
        ("rope_scaling", serde_json::json!({"type": "dynamic", "factor": 2.0})),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192})),
        ("rope_scaling", serde_json::json!({"type": "linear", "factor": 0.0})),
        ("rope_scaling", serde_json::json!({"type": "linear", "factor": "2"})),
        ("rope_scaling", serde_json::json!({"rope_type": 3})),
        ("rope_scaling", serde_json::json!("yarn")),
        ("rope_scaling", serde_json::json!(["linear", 2.0])),
        ("rope_parameters", serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})),
        ("rope_parameters", serde_json::json!("default")),
        ("rope_parameters", serde_json::json!({"rope_type": "default", "rope_theta": 500000.0})),
        ("rope_parameters", serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
        ("hidden_act", serde_json::json!("gelu")),
        ("attention_bias", serde_json::json!(true)),
        ("mlp_bias", serde_json::json!(true)),
        ("sliding_window", serde_json::json!(16)),
        ("sliding_window", serde_json::json!("4096")),
        ("hidden_size", serde_json::json!(0)),
        ("eos_token_id", serde_json::json!(97)),
        ("bos_token_id", serde_json::json!(1000)),
        ("head_dim", serde_json::json!(512)),
        ("head_dim", serde_json::json!((1u64 << 62) + 8)),
    ] {
        let e = with(key, v.clone()).expect_err(&format!("{key} = {v} accepted"));
        assert!(e.contains(key) && e.contains("config.json"), "{key} = {v}: {e}");
    }
    // Fewer layers than the checkpoint holds: the rest would be ignored without a word.
    let e = with("num_hidden_layers", serde_json::json!(2)).expect_err("2 of 3 layers accepted");
    assert!(e.contains("not used") && e.contains("model.layers.2."), "{e}");
    // Absent optional keys (and null) still take their defaults.
    let mut c = cfg.clone();
    c.as_object_mut().unwrap().remove("rope_theta");
    c["head_dim"] = serde_json::Value::Null;
    // Settings that say what this runtime does anyway load too.
    c["rope_scaling"] = serde_json::json!({"rope_type": "default"});
    c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 10000});
    c["sliding_window"] = serde_json::Value::Null;
    c["mlp_bias"] = serde_json::json!(false);
    std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(load_dir(&dir).unwrap().config.rope_theta, 10000.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// transformers 5 writes RoPE's base only inside `rope_parameters` (its config.json has no
/// top-level `rope_theta`): read from there, not taken as the default 10,000 (Llama 3's base is
/// 500,000, SmolLM2's 100,000). Each scaling saves in the form transformers reads and loads back.
#[test]
fn rope_settings_are_read_from_either_form_and_saved() {
    use revive::model::RopeScaling;
    let w = random_weights(&Config::tiny_llama(), 7);
    let dir = tmp("rope-parameters");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("rope_theta");
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let c = load_dir(&dir).unwrap().config;
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.rope_scaling, RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 });
    for scaling in [RopeScaling::None, RopeScaling::Linear { factor: 2.5 }, c.rope_scaling.clone()] {
        let scaled = revive::model::Weights { config: Config { rope_scaling: scaling.clone(), ..w.config.clone() }, tensors: w.tensors.clone() };
        save_dir(&scaled, &dir, SaveDtype::F32, None).unwrap();
        assert_eq!(load_dir(&dir).unwrap().config.rope_scaling, scaling);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Qwen2's sliding window as transformers reads it: off unless `use_sliding_window` (a window
/// in the file then changes nothing), on for the layers from `max_window_layers` on or those
/// `layer_types` names; refused only where some layer would attend through a window shorter
/// than the context.
#[test]
fn qwen2_windows_are_read_as_transformers_reads_them() {
    let w = random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 8);
    let dir = tmp("qwen2-window");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let cfg_path = dir.join("config.json");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(saved["model_type"], "qwen2");
    let with = |changes: serde_json::Value| {
        let mut c = saved.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        std::fs::write(&cfg_path, serde_json::to_string(&c).unwrap()).unwrap();
        load_dir(&dir).map(|w| assert!(w.config.qkv_bias)).map_err(|e| e.to_string())
    };
    let full = ["full_attention"; 3];
    let one_sliding = ["full_attention", "full_attention", "sliding_attention"];
    for accepted in [
        serde_json::json!({"use_sliding_window": null, "sliding_window": 16}),
        serde_json::json!({"use_sliding_window": false, "sliding_window": 16, "max_window_layers": 0}),
        serde_json::json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 3}),
        serde_json::json!({"use_sliding_window": true, "sliding_window": null, "max_window_layers": 0}),
        serde_json::json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 0, "layer_types": full}),
    ] {
        with(accepted.clone()).unwrap_or_else(|e| panic!("{accepted} refused: {e}"));
    }
    for refused in [
        serde_json::json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2, "layer_types": null}),
        serde_json::json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 3, "layer_types": one_sliding}),
    ] {
        let e = with(refused.clone()).expect_err(&format!("{refused} accepted"));
        assert!(e.contains("sliding_window is 16") && e.contains("config.json"), "{refused}: {e}");
    }
    let e = with(serde_json::json!({"layer_types": ["full_attention", "chunked_attention", "full_attention"]})).unwrap_err();
    assert!(e.contains("layer_types"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A second, stale shard that repeats tensors is refused; an index is followed (a file it does
/// not name is not read) and checked.
#[test]
fn shards_are_unambiguous_and_follow_the_index() {
    let w = random_weights(&Config::tiny_llama(), 7);
    let dir = tmp("shards");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let model = dir.join("model.safetensors");
    std::fs::copy(&model, dir.join("model-old.safetensors")).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("also in") && e.contains("model-old.safetensors"), "{e}");

    // An index naming model.safetensors for every tensor: the stale file is ignored.
    let bytes = std::fs::read(&model).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(str::to_string).collect();
    let map: serde_json::Map<String, serde_json::Value> = names.iter().map(|n| (n.clone(), serde_json::json!("model.safetensors"))).collect();
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({ "metadata": {}, "weight_map": map }).to_string()).unwrap();
    let back = load_dir(&dir).unwrap();
    assert_eq!(back.tensors, w.tensors);

    // The index puts a tensor in a file it is not in, or lists one that exists nowhere.
    let mut wrong = map.clone();
    wrong.insert(names[0].clone(), serde_json::json!("model-old.safetensors"));
    std::fs::write(&index, serde_json::json!({ "weight_map": wrong }).to_string()).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    // model-old.safetensors holds every tensor, of which the index now gives it just one.
    assert!(e.contains("is here, but model.safetensors.index.json puts it in"), "{e}");
    let mut extra = map.clone();
    extra.insert("model.layers.9.mlp.up_proj.weight".into(), serde_json::json!("model.safetensors"));
    std::fs::write(&index, serde_json::json!({ "weight_map": extra }).to_string()).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("model.layers.9.mlp.up_proj.weight") && e.contains("missing"), "{e}");
    std::fs::write(&index, "{\"weight_map\": 3}").unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("weight_map") && e.contains("index.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A save over an earlier one replaces both files; temporaries of an interrupted save are gone.
#[test]
fn saves_leave_no_temporaries() {
    let dir = tmp("resave");
    save_dir(&random_weights(&Config::tiny_llama(), 8), &dir, SaveDtype::F32, None).unwrap();
    std::fs::write(dir.join("model.safetensors.partial"), b"half a model").unwrap();
    let w = random_weights(&Config::tiny_llama(), 9);
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["config.json", "model.safetensors"]);
    assert_eq!(load_dir(&dir).unwrap().tensors, w.tensors);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Not a test of its own: the child process of the full-disk test, run under a file-size limit.
#[test]
fn child_save_under_a_file_size_limit() {
    let Ok(dir) = std::env::var("REVIVE_TEST_FULL_DISK_DIR") else { return };
    let r = save_dir(&random_weights(&Config::tiny_llama(), 11), std::path::Path::new(&dir), SaveDtype::F32, None);
    println!("SAVE-RESULT {}", r.map(|_| "ok".to_string()).unwrap_or_else(|e| format!("error: {e}")));
}

/// A disk that fills during a save (a file-size limit makes every write past 32 KB fail, as a
/// full disk does): a clear error, the previous model intact, no temporary left behind.
#[test]
fn a_full_disk_during_a_save_keeps_the_previous_model() {
    let dir = tmp("full-disk");
    let old = random_weights(&Config::tiny_llama(), 10);
    save_dir(&old, &dir, SaveDtype::F32, None).unwrap();
    // SIGXFSZ ignored (inherited through exec) turns the limit into EFBIG errors, as on a full disk.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" --exact child_save_under_a_file_size_limit --nocapture --test-threads 1")
        .arg(std::env::current_exe().unwrap())
        .env("REVIVE_TEST_FULL_DISK_DIR", &dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.split("SAVE-RESULT").nth(1).unwrap_or_else(|| panic!("child said: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(line.contains("error") && line.contains("model.safetensors"), "{line}");
    let back = load_dir(&dir).unwrap();
    assert_eq!(back.tensors, old.tensors, "the previous model changed");
    let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["config.json", "model.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites one tensor of a saved checkpoint as f32 `data` of `shape` (the other tensors as they were).
fn replace_tensor(file: &std::path::Path, name: &str, shape: &[usize], data: &[f32]) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    let slot = owned.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("no tensor {name}"));
    slot.2 = shape.to_vec();
    slot.3 = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, file).unwrap();
}

/// A GPT-2 checkpoint whose fused Q/K/V bias is short or a scalar: split into three, it panicked.
#[test]
fn gpt2_fused_bias_of_the_wrong_shape_is_refused() {
    let w = random_weights(&Config::tiny_gpt2(), 8);
    let d = w.config.hidden;
    let dir = tmp("gpt2-bias");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let model = dir.join("model.safetensors");
    let name = safetensors::SafeTensors::deserialize(&std::fs::read(&model).unwrap()).unwrap().names().into_iter().find(|n| n.ends_with("h.1.attn.c_attn.bias")).unwrap().to_string();
    let clean = std::fs::read(&model).unwrap();
    for shape in [vec![3 * d - 1], vec![], vec![1, 3 * d]] {
        std::fs::write(&model, &clean).unwrap();
        replace_tensor(&model, &name, &shape, &vec![0.5; shape.iter().product()]);
        let r = std::panic::catch_unwind(|| load_dir(&dir));
        let e = r.expect("loader panicked").expect_err(&format!("bias of shape {shape:?} accepted")).to_string();
        assert!(e.contains("h.1.attn.c_attn.bias") && e.contains("expected"), "{shape:?}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-m DIR`: the end token comes from config.json when no tokenizer_config.json names it, and a
/// save writes that file for the next load, keeping what else it held; a tokenizer with more
/// tokens than the embedding has rows loads (fine-tunes that added a token without resizing),
/// and a text using such a token is refused naming the tokenizer (it failed mid-forward).
#[test]
fn a_directorys_tokenizer_keeps_its_end_token_and_fits_its_model() {
    use revive::model::{load, Tok};
    let w = random_weights(&Config::tiny_llama(), 9);
    let dir = tmp("tokenizer");
    let words: Vec<String> = (0..w.config.vocab_size).map(|i| format!("w{i}")).collect();
    let tok = Tok::word_level(&words.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    load::save(&w, &tok, &dir, SaveDtype::F32).unwrap();
    // word_level has no end token: tokenizer_config.json names none, config.json's id is used.
    let back = load::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(back.tok.eos(), w.config.eos_token_id);
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    assert_eq!(load::load(dir.to_str().unwrap()).unwrap().tok.eos(), w.config.eos_token_id);
    // A tokenizer_config.json of its own: a save over the directory keeps its other settings.
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "w5", "chat_template": "{{ x }}", "model_max_length": 64}"#).unwrap();
    let m = load::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(m.tok.eos(), Some(5));
    load::save(&m.weights, &m.tok, &dir, SaveDtype::F32).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    // (And says it puts no start token: transformers' Llama tokenizer would put `<s>`.)
    assert_eq!(cfg, serde_json::json!({"eos_token": "w5", "chat_template": "{{ x }}", "model_max_length": 64, "add_bos_token": false}));

    let more: Vec<String> = (0..w.config.vocab_size + 3).map(|i| format!("w{i}")).collect();
    let big = Tok::word_level(&more.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    big.inner().save(dir.join("tokenizer.json"), false).unwrap();
    let m = load::load(dir.to_str().unwrap()).expect("a tokenizer with tokens past the embedding loads");
    assert_eq!(m.tok.encode("w3 w96").unwrap(), [3, 96]);
    let e = m.tok.encode("w3 w98").unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("token 98") && e.contains("97 embedding rows"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model with q/k/v biases whose rows rotate adjacent pairs (as a GGUF's would) saves with its
/// Q/K rows and the q/k biases reordered alike into rotate-half order: read back, it gives the
/// same logits in the f64 reference.
#[test]
fn biases_are_reordered_with_their_rows() {
    let w = random_weights(&Config { qkv_bias: true, rope_style: RopeStyle::Adjacent, ..Config::tiny_llama() }, 41);
    let dir = tmp("bias-rows");
    save_dir(&w, &dir, SaveDtype::F32, None).unwrap();
    let back = load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(back.config.rope_style, RopeStyle::Half);
    assert!(back.tensors["layers.0.bq"] != w.tensors["layers.0.bq"], "the bias kept its order");
    let seqs = vec![vec![3, 9, 1, 27, 5, 11]];
    let (a, _) = CpuModel::new(&w).forward(&seqs, &Probes::default());
    let (b, _) = CpuModel::new(&back).forward(&seqs, &Probes::default());
    for (x, y) in a[0].iter().flatten().zip(b[0].iter().flatten()) {
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{x} against {y}");
    }
}
