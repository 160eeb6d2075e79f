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
    assert!(e.contains("has shape") && e.contains("[76, 48]"), "{e}");
    std::fs::write(&cfg_path, cfg.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4")).unwrap();
    let e = load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("layers.3"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
