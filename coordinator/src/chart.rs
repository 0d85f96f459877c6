//! The demo's loss chart: validation loss per round, as an SVG drawn by `plotters`.
//!
//! SVG because its `<text>` is rendered by whatever opens the file: a PNG with a title,
//! tick labels and axis names would need a font file shipped or found on the machine.
//! The coordinator knows the validation loss of every closed round (it is in the
//! round's `RoundClosed` entry) and of the initial model; it never sees the workers'
//! training losses (a commitment binds them, only opened steps reveal some), so the
//! chart shows the validation loss alone.

use plotters::prelude::*;

/// The unit of the loss: mean softmax cross-entropy (natural log) per predicted
/// character.
pub const LOSS_UNIT: &str = "nats/char";

/// What went wrong drawing the chart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChartError {
    #[error("drawing the loss chart: {0}")]
    Draw(String),
}

fn draw_error(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// The chart's title for the job called `job`.
pub fn title(job: &str) -> String {
    format!("{job}: validation loss per round")
}

/// The y axis' name.
pub fn y_label() -> String {
    format!("validation loss ({LOSS_UNIT})")
}

/// The x axis' name.
pub const X_LABEL: &str = "round (0: the initial model)";

/// An SVG document charting `points` (round, validation loss), one marked point per
/// round, for the job called `job`. Points whose loss is not finite are left out.
pub fn loss_chart(job: &str, points: &[(u64, f32)]) -> Result<String, ChartError> {
    let points: Vec<(u64, f64)> = points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(r, v)| (r, f64::from(v)))
        .collect();
    let last_round = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    // A margin of a tenth of the span (or of 0.5 nats for a flat or empty series) keeps
    // the extreme points off the frame.
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = if hi > lo { (hi - lo) / 10.0 } else { 0.5 };
    let (lo, hi) = ((lo - pad).max(0.0), hi + pad);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title(job), ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0u64..last_round, lo..hi)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            // Every round a tick while they fit; plotters thins them beyond.
            .x_labels((last_round as usize + 1).min(25))
            .y_labels(8)
            .x_desc(X_LABEL)
            .y_desc(y_label())
            .y_label_formatter(&|v| format!("{v:.2}"))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_error)?;
        let line = RGBColor(200, 40, 40);
        chart
            .draw_series(
                LineSeries::new(points.iter().copied(), line.stroke_width(2)).point_size(4),
            )
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element, unescaped enough for plain labels.
    fn texts(svg: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find("<text") {
            let after = &rest[start..];
            let Some(open_end) = after.find('>') else {
                break;
            };
            let Some(close) = after.find("</text>") else {
                break;
            };
            out.push(after[open_end + 1..close].trim().to_owned());
            rest = &after[close..];
        }
        out
    }

    /// `(cx, cy)` of every `<circle>`, in document order.
    fn circles(svg: &str) -> Vec<(f64, f64)> {
        let attr = |tag: &str, name: &str| -> f64 {
            let key = format!(" {name}=\"");
            let at = tag.find(&key).expect("attribute present") + key.len();
            let len = tag[at..].find('"').expect("attribute closed");
            tag[at..at + len].parse().expect("a number")
        };
        svg.split("<circle")
            .skip(1)
            .map(|t| {
                let tag = &t[..t.find('>').expect("tag closed")];
                (attr(tag, "cx"), attr(tag, "cy"))
            })
            .collect()
    }

    #[test]
    fn the_chart_has_a_title_axes_and_one_point_per_round() {
        let series = [(0, 4.56), (1, 3.1), (2, 2.6), (3, 2.3), (4, 2.1)];
        let svg = loss_chart("shakespeare-mlp", &series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        let texts = texts(&svg);
        for want in [
            "shakespeare-mlp: validation loss per round",
            X_LABEL,
            "validation loss (nats/char)",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
        }
        // A tick label for every round on the x axis, loss values on the y axis.
        for r in 0..=4 {
            assert!(texts.contains(&r.to_string()), "no tick {r} in {texts:?}");
        }
        assert!(
            texts
                .iter()
                .any(|t| t.parse::<f64>().is_ok() && t.contains('.'))
        );

        // One marker per round, left to right, higher on the page as the loss falls
        // (SVG's y grows downwards).
        let dots = circles(&svg);
        assert_eq!(dots.len(), series.len(), "{dots:?}");
        for pair in dots.windows(2) {
            assert!(pair[0].0 < pair[1].0, "x not increasing: {dots:?}");
            assert!(
                pair[0].1 < pair[1].1,
                "falling loss not drawn lower: {dots:?}"
            );
        }
    }

    #[test]
    fn non_finite_losses_are_left_out_and_empty_series_still_draw() {
        let svg = loss_chart("j", &[(0, 4.0), (1, f32::NAN), (2, 3.0)]).unwrap();
        assert_eq!(circles(&svg).len(), 2);
        let svg = loss_chart("j", &[]).unwrap();
        assert!(circles(&svg).is_empty());
        assert!(texts(&svg).contains(&title("j")));
    }
}
