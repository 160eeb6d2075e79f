//! Plots of results (SVG, plotters): what the JSON records say, at a glance.

use crate::bench::edit::EditBench;
use crate::edit::run::EditRecord;
use crate::eval::spectrum::{Diagnostics, LayerSpectrum};
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Model { file: path.display().to_string(), detail: format!("cannot draw the plot: {e}") }
}

/// P(target_new) and P(target_true) after the rewrite prompt, before and after each edit.
pub fn edit_probabilities(records: &[EditRecord], path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let n = records.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("ROME edits: probability of the answers", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.5..n + 0.5, 0.0..1.0)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("edit")
        .y_desc("probability")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    type Pick = fn(&EditRecord) -> Option<f64>;
    let series: [(&str, RGBColor, Pick); 4] = [
        ("P(new) before", RGBColor(230, 159, 0), |r| Some(r.before.new.p)),
        ("P(new) after", RGBColor(0, 114, 178), |r| Some(r.after.new.p)),
        ("P(true) before", RGBColor(0, 158, 115), |r| r.before.true_.as_ref().map(|t| t.p)),
        ("P(true) after", RGBColor(204, 121, 167), |r| r.after.true_.as_ref().map(|t| t.p)),
    ];
    for (label, color, pick) in series {
        let pts: Vec<(f64, f64)> = records.iter().enumerate().filter_map(|(i, r)| pick(r).map(|p| (i as f64 + 1.0, p))).collect();
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| plot_err(path, e))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// A named line: its points and whether it is drawn dashed (a reference).
type Series = (String, Vec<(f64, f64)>, bool);

/// A line chart of several named series on one panel.
struct Panel<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    log_y: bool,
    series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [RGBColor(0, 114, 178), RGBColor(213, 94, 0), RGBColor(0, 158, 115), RGBColor(204, 121, 167), RGBColor(230, 159, 0), RGBColor(86, 180, 233)];

fn draw_panel(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, p: &Panel, path: &Path) -> Result<()> {
    let pts = p.series.iter().flat_map(|(_, v, _)| v.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts.filter(|(_, y)| y.is_finite() && (!p.log_y || *y > 0.0)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.1, 1.0);
    }
    if x1 <= x0 {
        // One x (a single checkpoint): the point in the middle, not on the left edge.
        let half = 0.5 * x0.abs().max(1.0);
        (x0, x1) = (x0 - half, x1 + half);
    }
    if y1 <= y0 {
        // A flat series sits in the middle of its panel (a share of 1 between 0.5 and 1.5).
        let half = 0.5 * y0.abs().max(1e-3);
        (y0, y1) = (y0 - half, y1 + half);
    }
    // A panel with no value at all says so instead of drawing empty axes.
    let measured = p.series.iter().any(|(_, v, _)| v.iter().any(|(_, y)| y.is_finite()));
    let title = if measured { p.title.to_string() } else { format!("{} (not measured)", p.title) };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 16)).margin(10).x_label_area_size(32).y_label_area_size(56);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| plot_err(path, e))?;
            chart.configure_mesh().x_desc(p.x_desc).y_desc(p.y_desc).draw().map_err(|e| plot_err(path, e))?;
            for (i, (label, v, dashed)) in p.series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let style = if *dashed { color.mix(0.5).stroke_width(1) } else { color.stroke_width(2) };
                let keep: Vec<(f64, f64)> = v.iter().copied().filter(|(_, y)| y.is_finite() && (!p.log_y || *y > 0.0)).collect();
                // Markers too: a series of one point (an arm with one checkpoint after the
                // start) has no line to draw.
                if !*dashed {
                    chart.draw_series(keep.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| plot_err(path, e))?;
                }
                chart
                    .draw_series(LineSeries::new(keep, style))
                    .map_err(|e| plot_err(path, e))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| plot_err(path, e))?;
        }};
    }
    let pad = 0.05 * (y1 - y0);
    if p.log_y {
        finish!(b.build_cartesian_2d(x0..x1, (y0 * 0.9..y1 * 1.1).log_scale()));
    } else {
        finish!(b.build_cartesian_2d(x0..x1, y0 - pad..y1 + pad));
    }
    Ok(())
}

fn draw_panels(panels: &[Panel], cols: usize, path: &Path) -> Result<()> {
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (560 * cols as u32, 400 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    for (area, p) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, p, path)?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// `revive spectrum`: the top singular values per layer (the original's dashed), and with an
/// original, the top-k subspace similarities per layer.
pub fn spectra(layers: &[LayerSpectrum], path: &Path) -> Result<()> {
    let mut sv = Panel { title: "top singular values of the MLP down-projections", x_desc: "index i", y_desc: "σ_i", log_y: true, series: vec![] };
    for l in layers.iter().take(PALETTE.len()) {
        let line = |s: &[f64]| s.iter().enumerate().map(|(i, &v)| (i as f64 + 1.0, v)).collect::<Vec<_>>();
        sv.series.push((format!("layer {}", l.layer), line(&l.sigma), false));
        if let Some(d) = &l.against {
            sv.series.push((format!("layer {} original", l.layer), line(&d.sigma_original), true));
        }
    }
    let mut panels = vec![sv];
    if layers.iter().any(|l| l.against.is_some()) {
        let pick = |f: fn(&Diagnostics) -> f64| layers.iter().filter_map(|l| l.against.as_ref().map(|d| (l.layer as f64, f(d)))).collect::<Vec<_>>();
        panels.push(Panel {
            title: "top-k subspace similarity to the original",
            x_desc: "layer",
            y_desc: "‖U0ᵀU‖²/k",
            log_y: false,
            series: vec![("left".into(), pick(|d| d.left_similarity), false), ("right".into(), pick(|d| d.right_similarity), false)],
        });
    }
    draw_panels(&panels, panels.len(), path)
}

/// Sequential edits arm by arm (plain ROME, ROME + REVIVE): the known facts kept, the top-k
/// subspace similarity, ‖W − W0‖_F and P(new) right after each edit.
pub fn tracking(arms: &[EditBench], path: &Path) -> Result<()> {
    type Pick = fn(&EditRecord) -> Option<f64>;
    let panel = |title: &'static str, y_desc: &'static str, pick: Pick| Panel {
        title,
        x_desc: "edits so far",
        y_desc,
        log_y: false,
        series: arms.iter().map(|a| (a.arm.clone(), a.records.iter().filter_map(|r| pick(r).map(|v| (r.index as f64 + 1.0, v))).collect(), false)).collect(),
    };
    let panels = [
        panel("unrelated known facts still answered", "facts", |r| r.tracking.as_ref().map(|t| t.known_correct as f64)),
        panel("left top-k subspace similarity to the original", "‖U0ᵀU‖²/k", |r| r.tracking.as_ref()?.diagnostics.as_ref().map(|d| d.left_similarity)),
        panel("distance from the original weight", "‖W − W0‖_F", |r| r.tracking.as_ref()?.diagnostics.as_ref().map(|d| d.drift)),
        panel("P(new target) right after the edit", "probability", |r| Some(r.after.new.p)),
    ];
    draw_panels(&panels, 2, path)
}

/// The experiment: every measure against the number of edits, one line per arm.
pub fn experiment(rows: &[crate::eval::experiment::Checkpoint], path: &Path) -> Result<()> {
    use crate::eval::experiment::Checkpoint;
    let mut arms: Vec<String> = rows.iter().map(|c| c.arm.clone()).collect();
    arms.sort();
    arms.dedup();
    type Pick = fn(&Checkpoint) -> Option<f64>;
    let panel = |title: &'static str, y_desc: &'static str, pick: Pick| Panel {
        title,
        x_desc: "edits",
        y_desc,
        log_y: false,
        series: arms
            .iter()
            .map(|a| (a.clone(), rows.iter().filter(|c| &c.arm == a).filter_map(|c| pick(c).map(|v| (c.edits as f64, v))).collect(), false))
            .collect(),
    };
    fn mean(c: &Checkpoint, f: fn(&crate::eval::experiment::MatrixState) -> f64) -> Option<f64> {
        (!c.matrices.is_empty()).then(|| c.matrices.iter().map(f).sum::<f64>() / c.matrices.len() as f64)
    }
    let mut panels = vec![
        panel("efficacy, edits since the last checkpoint", "share", |c| c.recent?.efficacy),
        panel("efficacy, all edits so far", "share", |c| c.all?.efficacy),
        panel("generalisation (paraphrases), all edits", "share", |c| c.all?.paraphrase),
        panel("specificity (neighbourhood), all edits", "share", |c| c.all?.neighborhood),
        panel("EasyEdit locality against the unedited model, all edits", "share", |c| c.all?.locality),
        panel("perplexity on held-out prose", "perplexity", |c| c.perplexity),
        panel("known facts still answered", "share", |c| c.known_correct.map(|k| k as f64 / c.known_total.max(1) as f64)),
        panel("known facts of relations no edit touches", "share", |c| c.known_untouched.map(|k| k.correct as f64 / k.total.max(1) as f64)),
        panel("KL from the unedited model", "nats", |c| c.agreement.map(|a| a.kl)),
        panel("fluency (n-gram entropy)", "bits", |c| c.fluency),
        panel("distance from the original, mean over layers", "‖W − W0‖_F", |c| mean(c, |m| m.drift)),
        panel("top-k subspace similarity, mean over layers", "‖U0ᵀU‖²/k", |c| mean(c, |m| m.left_similarity)),
    ];
    // Only data with portability questions (KnowEdit's) has the curve: no empty panel otherwise.
    if rows.iter().any(|c| c.all.and_then(|s| s.portability).is_some()) {
        panels.insert(5, panel("EasyEdit portability, all edits", "share", |c| c.all?.portability));
    }
    draw_panels(&panels, 2, path)
}

/// Causal tracing of one fact as ROME draws it: per kind a token × layer map of the probability
/// of the answer with that state restored, from the corrupted run's (white) to the panel's
/// largest (full colour); the subject's tokens marked with `*`.
pub fn trace_maps(tokens: &[String], traces: &[crate::eval::trace::Trace], path: &Path) -> Result<()> {
    use crate::eval::trace::TraceKind;
    let t = tokens.len();
    let label_width = tokens.iter().map(|s| s.chars().count()).max().unwrap_or(1).min(24) as u32;
    let root = SVGBackend::new(path, (360 * traces.len().max(1) as u32 + 8 * label_width, 80 + 26 * t.max(4) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    for (area, trace) in root.split_evenly((1, traces.len().max(1))).iter().zip(traces) {
        let layers = trace.restored.len();
        let colour = match trace.kind {
            TraceKind::Hidden => RGBColor(94, 60, 153),
            TraceKind::Mlp => RGBColor(0, 128, 64),
            TraceKind::Attn => RGBColor(178, 24, 43),
        };
        let (low, high) = (trace.corrupted, trace.restored.iter().flatten().copied().fold(trace.corrupted, f64::max));
        let shade = |p: f64| {
            let a = if high > low { ((p - low) / (high - low)).clamp(0.0, 1.0) } else { 0.0 };
            let mix = |c: u8| (255.0 - a * (255.0 - c as f64)).round() as u8;
            RGBColor(mix(colour.0), mix(colour.1), mix(colour.2))
        };
        let mark = |pos: usize| if (trace.subject[0]..=trace.subject[1]).contains(&pos) { "*" } else { "" };
        // Rows as segments, so that each token's label sits beside its row; the first token on
        // top (row t − 1). A range a..b has b − a + 1 segments, and needs b > a.
        let row_of = |pos: usize| (t - 1 - pos) as i32;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(r) | SegmentValue::Exact(r) if (0..t as i32).contains(r) => {
                let pos = t - 1 - *r as usize;
                format!("{}{}", mark(pos), tokens[pos].chars().take(24).collect::<String>())
            }
            _ => String::new(),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{:?} restored: P(answer) {:.3}–{:.3}", trace.kind, low, high), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(16 + 7 * label_width)
            .build_cartesian_2d((0..(layers as i32 - 1).max(1)).into_segmented(), (0..(t as i32 - 1).max(1)).into_segmented())
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("layer")
            .x_labels(layers.min(10))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(l) | SegmentValue::Exact(l) if (*l as usize) < layers => l.to_string(),
                _ => String::new(),
            })
            .y_labels(t)
            .y_label_formatter(&label)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        let cells = trace.restored.iter().enumerate().flat_map(|(l, row)| row.iter().enumerate().map(move |(pos, &p)| (l as i32, pos, p)));
        chart
            .draw_series(cells.map(|(l, pos, p)| Rectangle::new([(SegmentValue::Exact(l), SegmentValue::Exact(row_of(pos))), (SegmentValue::Exact(l + 1), SegmentValue::Exact(row_of(pos) + 1))], shade(p).filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// Causal tracing averaged over facts: per kind (hidden state, MLP or attention output), the
/// probability a restored state brings back against the layer, at the subject's last token and
/// the last token.
pub fn trace_curves(kinds: &[(crate::eval::trace::TraceKind, Vec<f64>, Vec<f64>)], facts: usize, path: &Path) -> Result<()> {
    let titles: Vec<String> = kinds.iter().map(|(k, _, _)| format!("{k:?} restored, mean of {facts} fact(s)")).collect();
    let line = |v: &[f64]| v.iter().enumerate().map(|(l, &e)| (l as f64, e)).collect::<Vec<_>>();
    let panels: Vec<Panel> = kinds
        .iter()
        .zip(&titles)
        .map(|((_, subject_last, last), title)| Panel {
            title,
            x_desc: "layer",
            y_desc: "P(answer) restored − corrupted",
            log_y: false,
            series: vec![("subject's last token".into(), line(subject_last), false), ("last token".into(), line(last), true)],
        })
        .collect();
    draw_panels(&panels, panels.len(), path)
}

/// A PNG copy of an SVG file (resvg; text in the system's fonts, none drawn if it has none).
pub fn png_from_svg(svg: &Path, png: &Path) -> Result<()> {
    let data = std::fs::read(svg).map_err(|e| plot_err(svg, e))?;
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    // The SVG asks for the generic "sans-serif", which fontdb maps to Arial; use a sans face
    // this machine has (DejaVu on Debian), else any face at all.
    let families: Vec<String> = db.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let pick = ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"].iter().map(|s| s.to_string()).find(|s| families.contains(s)).or_else(|| families.first().cloned());
    if let Some(family) = pick {
        db.set_sans_serif_family(family);
    }
    let tree = resvg::usvg::Tree::from_data(&data, &opt).map_err(|e| plot_err(svg, e))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or_else(|| plot_err(svg, "empty image"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::identity(), &mut pixmap.as_mut());
    pixmap.save_png(png).map_err(|e| plot_err(png, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One fact's maps: every token's label beside its row (the subject's marked), one cell
    /// per layer and token in each kind's panel, the shade from the corrupted P to the largest.
    #[test]
    fn trace_maps_label_every_row_and_fill_every_cell() {
        use crate::eval::trace::{Trace, TraceKind};
        let tokens: Vec<String> = ["The", " Eiff", "el", " Tower", " is", " in"].iter().map(|s| s.to_string()).collect();
        let (layers, t) = (7, tokens.len());
        let trace = |kind, peak: f64| Trace {
            kind,
            subject: [1, 3],
            target: 0,
            clean: 0.6,
            corrupted: 0.05,
            restored: (0..layers).map(|l| (0..t).map(|pos| if (l, pos) == (2, 3) { peak } else { 0.05 + 0.001 * (l * t + pos) as f64 }).collect()).collect(),
        };
        let traces = [trace(TraceKind::Hidden, 0.5), trace(TraceKind::Mlp, 0.3), trace(TraceKind::Attn, 0.1)];
        let path = std::env::temp_dir().join(format!("revive-trace-maps-{}.svg", std::process::id()));
        trace_maps(&tokens, &traces, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for (pos, token) in tokens.iter().enumerate() {
            let label = if (1..=3).contains(&pos) { format!("*{token}") } else { token.clone() };
            assert_eq!(svg.matches(&format!("\n{label}\n")).count(), traces.len(), "{label} once per panel");
        }
        assert_eq!(svg.matches("<rect").count() - 1, traces.len() * layers * t, "one cell per layer and token in each panel, and the background");
        // The largest restored P in full colour (MLP: RGB 0, 128, 64), the corrupted one white.
        assert!(svg.contains("#008040") && svg.contains("P(answer) 0.050–0.300"), "{svg}");
        // One token, one layer.
        let tiny = Trace { subject: [0, 0], restored: vec![vec![0.2]], ..traces[1].clone() };
        trace_maps(&tokens[..1], &[tiny], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("\n*The\n") && svg.matches("<rect").count() == 2 && !svg.contains("width=\"0\""), "{svg}");
        std::fs::remove_file(&path).unwrap();
    }
    use crate::edit::request::EditRequest;
    use crate::edit::rome::RomeReport;
    use crate::edit::target::Target;
    use crate::eval::counterfact::{FactMetrics, TargetScore};

    fn metrics(new: f64, truth: f64) -> FactMetrics {
        let s = |p: f64| TargetScore { p, nll: -p.ln() };
        FactMetrics { new: s(new), true_: Some(s(truth)), efficacy: Some(new > truth), paraphrase: None, neighborhood: None, rewrite_acc: 0.0, rephrase_acc: None, locality_top: vec![], locality: None, portability: None }
    }

    #[test]
    fn draws_an_svg_with_every_series() {
        let record = |i: usize| EditRecord {
            index: i,
            request: EditRequest {
                case_id: None,
                subject: "S".into(),
                prompt: "{} is".into(),
                target_new: " a".into(),
                target_true: Some(" b".into()),
                paraphrase_prompts: vec![],
                neighborhood_prompts: vec![],
                generation_prompts: vec![],
                relation_id: None,
                locality: vec![],
                portability: vec![],
            },
            before: metrics(0.01, 0.6),
            after: metrics(0.9, 0.02),
            rome: RomeReport {
                layer: 0,
                templates: vec![],
                target: Target { delta: vec![], h_norm: 1.0, history: vec![], stopped_early: true },
                update_norm: 1.0,
                weight_norm: 1.0,
                key_alignment: 1.0,
                key_reach: None,
            },
            edit_seconds: 1.0,
            filter: None,
            tracking: Some(crate::edit::run::Tracking { diagnostics: Some(diag(i as f64)), known_correct: 20 - i, known_total: 20 }),
        };
        let path = std::env::temp_dir().join(format!("revive-plot-{}.svg", std::process::id()));
        edit_probabilities(&[record(0), record(1), record(2)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("P(new) after") && svg.matches("<circle").count() >= 12, "{}", &svg[..200.min(svg.len())]);

        let bench = |arm: &str| EditBench {
            arm: arm.into(),
            revive: None,
            edits: 3,
            seconds_per_edit_mean: 1.0,
            seconds_per_edit_median: 1.0,
            forward_seconds: 0.1,
            efficacy_after_each: 3,
            efficacy_at_end: 3,
            paraphrase_mean_at_end: None,
            scores_at_end: Default::default(),
            known_before: 20,
            known_after: 18,
            known_lost: vec![],
            records: vec![record(0), record(1), record(2)],
        };
        tracking(&[bench("rome"), bench("rome+revive")], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for want in ["unrelated known facts", "rome+revive", "‖W − W0‖_F", "subspace similarity"] {
            assert!(svg.contains(want), "tracking plot lacks {want:?}");
        }
        assert!(svg.matches("<polyline").count() >= 8, "4 panels × 2 arms of lines");
    }

    fn diag(x: f64) -> Diagnostics {
        Diagnostics {
            matrix: crate::model::names::down_name(0),
            k: 2,
            left_similarity: 1.0 - 0.01 * x,
            right_similarity: 1.0 - 0.02 * x,
            sigma: vec![3.0 + x, 1.0],
            sigma_original: vec![3.0, 1.0],
            weight_norm: 4.0,
            original_norm: 4.0,
            drift: x,
            leak: crate::linalg::subspace::Leak { left: 0.1, right: 0.2 },
            svd_iterations: 3,
        }
    }

    #[test]
    fn draws_spectra_and_similarities() {
        let layer = |l: usize, against: bool| LayerSpectrum {
            layer: l,
            matrix: crate::model::names::down_name(l),
            shape: [4, 6],
            sigma: vec![3.0, 2.0, 0.5],
            weight_norm: 4.0,
            against: against.then(|| diag(l as f64)),
        };
        let path = std::env::temp_dir().join(format!("revive-spectra-{}.svg", std::process::id()));
        spectra(&[layer(3, true), layer(5, true)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("layer 5 original") && svg.contains("subspace similarity"), "spectra plot lacks series");
        spectra(&[layer(0, false)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!svg.contains("subspace similarity"), "no similarity panel without an original");
    }

    #[test]
    fn draws_the_experiment_curves_as_svg_and_png() {
        use crate::eval::experiment::{CfScores, Checkpoint};
        let ckpt = |arm: &str, edits: usize, eff: f64| Checkpoint {
            arm: arm.into(),
            edits,
            batches: edits / 10,
            edit_seconds: 0.0,
            recent: Some(CfScores { requests: 5, efficacy: Some(eff), paraphrase: Some(0.5), neighborhood: Some(0.8), ..Default::default() }),
            all: Some(CfScores { requests: 5, efficacy: Some(eff), paraphrase: Some(0.4), neighborhood: Some(0.7), ..Default::default() }),
            known_correct: Some(9),
            known_total: 10,
            known_loss: None,
            known_by_relation: vec![],
            known_untouched: Some(crate::eval::retention::Retained { correct: 5, total: 8 }),
            perplexity: Some(30.0 + edits as f64),
            agreement: None,
            fluency: Some(5.0),
            matrices: vec![],
            measure_seconds: 0.0,
            measure_split: None,
        };
        let rows = vec![ckpt("memit-none", 0, 0.1), ckpt("memit-none", 20, 0.9), ckpt("memit-0.5", 0, 0.1), ckpt("memit-0.5", 20, 0.7)];
        let dir = std::env::temp_dir().join(format!("revive-curves-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (svg, png) = (dir.join("c.svg"), dir.join("c.png"));
        experiment(&rows, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("memit-0.5") && text.contains("perplexity on held-out prose") && text.contains("relations no edit touches"), "curves lack series or panels");
        png_from_svg(&svg, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // Lines were drawn: the decoded image is not all white.
        let img = resvg::tiny_skia::Pixmap::load_png(&png).unwrap();
        assert!(img.pixels().iter().any(|p| p.red() < 200), "the PNG is blank");
        // Agreement was not measured in these rows (`agreement: None`): its panel says so; the
        // measured panels do not.
        assert!(text.contains("KL from the unedited model (not measured)") && !text.contains("perplexity on held-out prose (not measured)"), "unmeasured panels unmarked");
        // A series of one point (efficacy has none at 0 edits) still shows it: a marker.
        let one = vec![ckpt("memit-0.5", 40, 0.95)];
        experiment(&one, &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<circle"), "a one-point series has no marker");
        // Portability has a panel only where some checkpoint measured it.
        assert!(!text.contains("portability"), "a portability panel without portability data");
        let mut with = rows.clone();
        with[1].all.as_mut().unwrap().portability = Some(0.3);
        experiment(&with, &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("EasyEdit portability"), "no portability panel");
        std::fs::remove_dir_all(&dir).ok();
    }
}
