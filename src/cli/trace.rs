//! `revive trace`: causal tracing of one fact or of many (src/eval/trace.rs) — where a model
//! keeps its facts, and so which layers an edit of that model should rewrite.

use anyhow::{bail, Context, Result};
use revive::edit::hparams::{BatchHparams, BatchMethod, RomeHparams};
use revive::eval::trace::{choose_layers, embedding_std, layers_to_trace, trace, trace_input, Trace, TraceInput, TraceKind, TraceSettings};
use revive::gpu::{BackendChoice, Gpu};
use revive::model::forward::GpuModel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(short, long, default_value = "smollm2")]
    model: String,
    /// The subject of one fact, with --prompt.
    #[arg(long, requires = "prompt", conflicts_with = "edits")]
    subject: Option<String>,
    /// The relation with `{}` where the subject goes.
    #[arg(long, requires = "subject")]
    prompt: Option<String>,
    /// The answer traced (its first token); by default the model's own top token.
    #[arg(long)]
    target: Option<String>,
    /// Facts to trace and average (any layout `revive edit --edits` reads): each toward its
    /// true answer, kept only where that is the model's top token (a fact it knows).
    #[arg(long)]
    edits: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// What is put back: hidden (the residual after a layer), mlp (the MLP outputs of --window
    /// layers around it), attn (their attention outputs).
    #[arg(long, value_delimiter = ',', default_value = "hidden,mlp,attn")]
    kind: Vec<TraceKind>,
    /// Corrupted runs per fact.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// The noise's standard deviation in units of the std of the subjects' token embeddings
    /// (ROME's 3).
    #[arg(long, default_value_t = 3.0)]
    noise: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The MLP and attention kinds restore this many layers around each (ROME's 10).
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// The tables as JSON, written again after each fact (an interrupted run keeps its facts).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Go on from the facts --json already holds (a run stopped part way), tracing only the
    /// rest; the settings and facts must be the same.
    #[arg(long, requires = "json")]
    resume: bool,
    /// A plot (SVG; a PNG beside it): for one fact its token × layer maps, for several the
    /// mean effects against the layer.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write hyper-parameters for this model to FILE (for `revive edit --hparams FILE`):
    /// --method's shipped ones with the layers where restoring the MLP outputs at the subject's
    /// last token brings back the most, on average — ROME's one layer, or as many consecutive
    /// layers as the method's defaults edit. Needs the mlp kind.
    #[arg(long, value_name = "FILE")]
    suggest: Option<PathBuf>,
    /// The method --suggest writes for.
    #[arg(long, default_value = "memit", requires = "suggest", value_parser = super::edit::method_names())]
    method: String,
}

/// What --suggest chose, as written to the JSON.
#[derive(Serialize, Deserialize)]
struct Suggested {
    method: String,
    layers: Vec<usize>,
    file: PathBuf,
}

/// One traced fact as written to the JSON.
#[derive(Serialize, Deserialize)]
struct Traced {
    prompt: String,
    subject: String,
    tokens: Vec<String>,
    target: String,
    traces: Vec<Trace>,
}

/// The mean over facts, per kind, of the probability a restored state brings back beyond the
/// corrupted one (ROME's average indirect effect), at the subject's last token and the last token.
#[derive(Serialize, Deserialize)]
struct Average {
    kind: TraceKind,
    facts: usize,
    clean: f64,
    corrupted: f64,
    subject_last: Vec<f64>,
    last_token: Vec<f64>,
}

/// What --json writes: the settings, the means, and every fact traced so far.
#[derive(Serialize, Deserialize)]
struct TraceDoc {
    model: String,
    samples: usize,
    noise: f64,
    noise_std: f64,
    seed: u64,
    window: usize,
    /// The kinds traced (files written before 2026-12-08 lack it and cannot be resumed).
    #[serde(default)]
    kinds: Vec<TraceKind>,
    average: Vec<Average>,
    suggested: Option<Suggested>,
    facts: Vec<Traced>,
}

impl TraceDoc {
    /// The facts of an earlier run of the same trace that `--resume` keeps: refused where a
    /// setting or a fact differs, which would mix two traces in one mean.
    fn resumable(self, path: &std::path::Path, now: &TraceDoc, facts: &[(String, String, TraceInput)]) -> Result<Vec<Traced>> {
        if self.facts.len() > facts.len() {
            bail!("{}: cannot resume, it holds {} facts and this run traces {}", path.display(), self.facts.len(), facts.len());
        }
        let answer = |t: &Traced| t.traces.first().map(|trace| trace.target);
        if let Some((i, t)) = self.facts.iter().enumerate().find(|(i, t)| (&t.prompt, &t.subject, answer(t)) != (&facts[*i].0, &facts[*i].1, Some(facts[*i].2.target))) {
            bail!(
                "{}: cannot resume, its fact {i} is {:?} / {:?} toward token {:?} and this run's {:?} / {:?} toward {}",
                path.display(),
                t.prompt,
                t.subject,
                answer(t),
                facts[i].0,
                facts[i].1,
                facts[i].2.target
            );
        }
        // The noise's scale comes from all the facts' subjects, so a longer list than the
        // earlier run's differs here too: its facts were corrupted on another scale.
        let settings = |d: &TraceDoc| serde_json::json!({"model": d.model, "samples": d.samples, "noise": d.noise, "noise_std": d.noise_std, "seed": d.seed, "window": d.window, "kinds": d.kinds});
        let (was, is) = (settings(&self), settings(now));
        if was != is {
            bail!("{}: cannot resume, it traced with {was} and this run with {is}", path.display());
        }
        Ok(self.facts)
    }
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    if a.kind.is_empty() {
        bail!("--kind: give one or more of hidden, mlp and attn");
    }
    if a.suggest.is_some() && !a.kind.contains(&TraceKind::Mlp) {
        bail!("--suggest chooses layers from the MLP trace: add mlp to --kind");
    }
    for (flag, value) in [("--samples", a.samples), ("--window", a.window), ("--max-batch", a.max_batch), ("--limit", a.limit)] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if !(a.noise.is_finite() && a.noise >= 0.0) {
        bail!("--noise {} is not a non-negative number of embedding standard deviations", a.noise);
    }
    let m = super::common::load_model(&a.model)?;
    let gpu = Gpu::new(choice)?;
    let gm = GpuModel::new(&gpu, &m.weights)?;
    let top_token = |ids: &[u32]| -> Result<u32> {
        Ok(revive::model::generate::argmax(&gm.last_logits(&[ids.to_vec()])?.remove(0)))
    };
    // The facts: (prompt, subject, input).
    let mut facts: Vec<(String, String, TraceInput)> = vec![];
    if let (Some(subject), Some(prompt)) = (&a.subject, &a.prompt) {
        let probe = trace_input(&m.tok, prompt, subject, 0)?;
        let target = match &a.target {
            Some(t) => *m.tok.encode(t)?.first().with_context(|| format!("--target {t:?} has no tokens"))?,
            None => top_token(&probe.ids)?,
        };
        facts.push((prompt.clone(), subject.clone(), TraceInput { target, ..probe }));
    } else if let Some(path) = &a.edits {
        let requests = revive::edit::request::load_requests(path)?;
        let (mut unknown, mut no_answer) = (0, 0);
        for r in requests.iter().take(a.limit) {
            let Some(truth) = &r.target_true else {
                no_answer += 1;
                continue;
            };
            let Some(&target) = m.tok.encode(truth)?.first() else {
                no_answer += 1;
                continue;
            };
            let input = trace_input(&m.tok, &r.prompt, &r.subject, target).with_context(|| format!("{}: request {:?}", path.display(), r.subject))?;
            if top_token(&input.ids)? != target {
                unknown += 1;
                continue;
            }
            facts.push((r.prompt.clone(), r.subject.clone(), input));
        }
        eprintln!("{} of the first {} facts traced ({unknown} the model does not answer with its true answer, {no_answer} without one)", facts.len(), a.limit.min(requests.len()));
        if facts.is_empty() {
            bail!("{}: no fact the model knows among the first {}", path.display(), a.limit);
        }
    } else {
        bail!("give a fact (--subject S --prompt P) or facts (--edits FILE)");
    }

    // ROME's noise unit: the std of the traced subjects' token embeddings.
    let d = m.weights.config.hidden;
    let embed = &m.weights.tensors.get("embed").context("the model has no embedding")?.data;
    let rows: Vec<Vec<f32>> = facts.iter().flat_map(|(_, _, f)| f.ids[f.subject[0]..=f.subject[1]].iter().map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())).collect();
    let settings = TraceSettings { samples: a.samples, noise: a.noise * embedding_std(&rows), seed: a.seed, max_batch: a.max_batch, window: a.window, skip_unchanged_layers: true };

    let mut doc = TraceDoc { model: m.source.clone(), samples: a.samples, noise: a.noise, noise_std: settings.noise, seed: a.seed, window: a.window, kinds: a.kind.clone(), average: vec![], suggested: None, facts: vec![] };
    if let (true, Some(path)) = (a.resume, &a.json) {
        let text = std::fs::read_to_string(path).with_context(|| format!("--resume: cannot read {}", path.display()))?;
        let earlier: TraceDoc = serde_json::from_str(&text).with_context(|| format!("--resume: {} is not a trace's JSON", path.display()))?;
        doc.facts = earlier.resumable(path, &doc, &facts)?;
        eprintln!("{}: {} of the {} facts traced already, {} to go", path.display(), doc.facts.len(), facts.len(), facts.len() - doc.facts.len());
    }
    let bar = revive::progress::terminal_bar(((facts.len() - doc.facts.len()) * layers_to_trace(&gm, &a.kind)) as u64, "trace: layers", true);
    for (prompt, subject, input) in facts.into_iter().skip(doc.facts.len()) {
        let traces = trace(&gm, &input, &a.kind, &settings, &mut || bar.inc(1))?;
        let tokens = input.ids.iter().map(|&t| m.tok.decode(&[t])).collect::<revive::Result<Vec<_>>>()?;
        doc.facts.push(Traced { prompt, subject, tokens, target: m.tok.decode(&[input.target])?, traces });
        // What is traced is kept as it comes: a long trace stopped part way resumes from here.
        if let Some(path) = &a.json {
            doc.average = (0..a.kind.len()).map(|k| average(&doc.facts, k)).collect();
            revive::store::write_durable(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        }
    }
    bar.finish_and_clear();

    let traced = &doc.facts;
    let averages: Vec<Average> = (0..a.kind.len()).map(|k| average(traced, k)).collect();
    if let [one] = traced.as_slice() {
        print_one(one);
    }
    print_averages(&averages, traced.len());
    let suggested = match &a.suggest {
        Some(path) => {
            let mlp = averages.iter().find(|a| a.kind == TraceKind::Mlp).expect("checked: the mlp kind was traced");
            if a.window >= m.weights.config.n_layers {
                eprintln!("note: a window of {} layers covers all {} of this model's, so every layer restores the same MLPs and the trace cannot tell them apart: give a smaller --window", a.window, m.weights.config.n_layers);
            }
            let s = suggest(path, &a.method, mlp, &m.source, a.window)?;
            eprintln!("wrote {}: {} at layers {:?}; edit with `revive edit -m {} --method {} --hparams {}`", path.display(), s.method, s.layers, a.model, s.method, path.display());
            Some(s)
        }
        None => None,
    };
    if let Some(path) = &a.plot {
        match traced.as_slice() {
            [one] => revive::eval::plot::trace_maps(&one.tokens, &one.traces, path)?,
            _ => revive::eval::plot::trace_curves(&averages.iter().map(|a| (a.kind, a.subject_last.clone(), a.last_token.clone())).collect::<Vec<_>>(), traced.len(), path)?,
        }
        let png = path.with_extension("png");
        revive::eval::plot::png_from_svg(path, &png)?;
        eprintln!("wrote {} and {}", path.display(), png.display());
    }
    if let Some(path) = &a.json {
        (doc.average, doc.suggested) = (averages, suggested);
        revive::store::write_durable(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes --method's shipped hyper-parameters with the layers the MLP trace points to, and in
/// their `why` how they were chosen and that the other values were measured on SmolLM2.
fn suggest(path: &std::path::Path, method: &str, mlp: &Average, model: &str, window: usize) -> Result<Suggested> {
    let effect = &mlp.subject_last;
    let peak = choose_layers(effect, 1)[0];
    let why = |layers: &[usize]| {
        let effects: Vec<String> = layers.iter().map(|&l| format!("{l}: {:.3}", effect[l])).collect();
        format!(
            "chosen by `revive trace --suggest` on {model}: the {} consecutive layer(s) of {} where restoring the MLP outputs (a window of {window} layers around each) at the subject's last token brings back the most probability of the true answer, summed, on average over {} fact(s) (effect by layer: {}; the peak {:.3} at layer {peak}). The other values are the shipped ones (assets/hparams/{method}/smollm2.json), measured on SmolLM2-135M",
            layers.len(),
            effect.len(),
            mlp.facts,
            effects.join(", "),
            effect[peak],
        )
    };
    let lost = mlp.clean - mlp.corrupted;
    if effect[peak] <= 0.05 * lost {
        eprintln!("note: restoring MLP outputs brings back at most {:.4} of the {lost:.4} of P(answer) the corruption took: this trace hardly tells the layers apart (more facts or --samples may)", effect[peak]);
    }
    let (layers, text) = match BatchMethod::from_name(method) {
        None => {
            let mut hp = RomeHparams::smollm2();
            hp.layer = peak;
            hp.why.insert("layer".into(), why(&[hp.layer]));
            (vec![hp.layer], serde_json::to_string_pretty(&hp)?)
        }
        Some(m) => {
            let mut hp = BatchHparams::smollm2(m);
            hp.layers = choose_layers(effect, hp.layers.len());
            hp.why.insert("layers".into(), why(&hp.layers));
            (hp.layers.clone(), serde_json::to_string_pretty(&hp)?)
        }
    };
    revive::store::write_durable(path, (text + "\n").as_bytes())?;
    Ok(Suggested { method: method.into(), layers, file: path.into() })
}

fn average(traced: &[Traced], k: usize) -> Average {
    let n = traced.len() as f64;
    let traces: Vec<&Trace> = traced.iter().map(|t| &t.traces[k]).collect();
    let layers = traces[0].restored.len();
    let mean_effect = |token: &dyn Fn(&Trace) -> usize| -> Vec<f64> { (0..layers).map(|l| traces.iter().map(|t| t.restored[l][token(t)] - t.corrupted).sum::<f64>() / n).collect() };
    Average {
        kind: traces[0].kind,
        facts: traced.len(),
        clean: traces.iter().map(|t| t.clean).sum::<f64>() / n,
        corrupted: traces.iter().map(|t| t.corrupted).sum::<f64>() / n,
        subject_last: mean_effect(&|t| t.subject[1]),
        last_token: mean_effect(&|t| t.restored[0].len() - 1),
    }
}

/// One fact: each token's row — the restored P at every layer, the subject's tokens marked.
fn print_one(t: &Traced) {
    println!("{} → {:?}", t.prompt.replace("{}", &t.subject), t.target);
    for trace in &t.traces {
        println!("\n{:?}: P(target) clean {:.4}, corrupted {:.4}; restored at layer 0, 1, … (×100):", trace.kind, trace.clean, trace.corrupted);
        for (pos, token) in t.tokens.iter().enumerate() {
            let mark = if (trace.subject[0]..=trace.subject[1]).contains(&pos) { "*" } else { " " };
            let row: Vec<String> = trace.at_token(pos).iter().map(|p| format!("{:>3.0}", p * 100.0)).collect();
            println!("{mark}{:<14} {}", format!("{token:?}"), row.join(""));
        }
    }
    println!();
}

fn print_averages(averages: &[Average], facts: usize) {
    for a in averages {
        let (s, l) = (choose_layers(&a.subject_last, 1)[0], choose_layers(&a.last_token, 1)[0]);
        println!(
            "{:?} over {facts} fact(s): P clean {:.3}, corrupted {:.3}; the largest effect at the subject's last token at layer {s} (+{:.3}), at the last token at layer {l} (+{:.3})",
            a.kind, a.clean, a.corrupted, a.subject_last[s], a.last_token[l]
        );
        let row = |v: &[f64]| v.iter().map(|e| format!("{:>4.0}", e * 1000.0)).collect::<Vec<_>>().join("");
        println!("  effect ×1000 at the subject's last token, layer 0…: {}", row(&a.subject_last));
        println!("  effect ×1000 at the last token,           layer 0…: {}", row(&a.last_token));
    }
}
