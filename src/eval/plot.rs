//! Plots of results (SVG, plotters): what the JSON records say, at a glance.

use crate::edit::run::EditRecord;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::request::EditRequest;
    use crate::edit::rome::RomeReport;
    use crate::edit::target::Target;
    use crate::eval::counterfact::{FactMetrics, TargetScore};

    fn metrics(new: f64, truth: f64) -> FactMetrics {
        let s = |p: f64| TargetScore { p, nll: -p.ln() };
        FactMetrics { new: s(new), true_: Some(s(truth)), efficacy: Some(new > truth), paraphrase: None, neighborhood: None }
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
            },
            edit_seconds: 1.0,
        };
        let path = std::env::temp_dir().join(format!("revive-plot-{}.svg", std::process::id()));
        edit_probabilities(&[record(0), record(1), record(2)], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("P(new) after") && svg.matches("<circle").count() >= 12, "{}", &svg[..200.min(svg.len())]);
    }
}
