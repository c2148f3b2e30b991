//! Small SVG charts for the report, written by hand: a line chart over categories (the
//! benchmark's settings are a few discrete values) and a bar chart with min-max whiskers, each
//! with an optional goal line. Linear or logarithmic y axis.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];

/// How the y axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

/// A horizontal reference line.
#[derive(Clone, Debug)]
pub struct GoalLine {
    pub value: f64,
    pub label: String,
}

/// One line of a [`LineChart`]: a value (or none) per category.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub dashed: bool,
}

/// A line chart over categorical x values.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    pub scale: Scale,
    pub goal: Option<GoalLine>,
}

/// One bar of a [`BarChart`].
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub whisker: Option<(f64, f64)>,
}

/// A bar chart.
#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub bars: Vec<Bar>,
    pub scale: Scale,
    pub goal: Option<GoalLine>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The y axis: value range and mapping to pixels.
struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
}

impl Axis {
    /// An axis covering `values` (positive ones only on a log axis).
    fn covering(scale: Scale, values: impl Iterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0)).collect();
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        match scale {
            Scale::Linear => {
                let hi = if max.is_finite() && max > 0.0 { nice_ceiling(max * 1.05) } else { 1.0 };
                Self { scale, lo: 0.0, hi }
            }
            Scale::Log => {
                let (lo, hi) = if min.is_finite() { (min, max) } else { (1.0, 10.0) };
                let lo = 10f64.powf(lo.log10().floor());
                let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
                Self { scale, lo, hi }
            }
        }
    }

    fn y(&self, value: f64) -> f64 {
        let plot = HEIGHT - TOP - BOTTOM;
        let t = match self.scale {
            Scale::Linear => (value - self.lo) / (self.hi - self.lo),
            Scale::Log => (value.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10()),
        };
        HEIGHT - BOTTOM - t.clamp(0.0, 1.0) * plot
    }

    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Linear => (0..=5).map(|i| self.lo + (self.hi - self.lo) * f64::from(i) / 5.0).collect(),
            Scale::Log => {
                let mut ticks = Vec::new();
                let mut decade = self.lo;
                while decade <= self.hi * 1.0001 {
                    ticks.push(decade);
                    decade *= 10.0;
                }
                ticks
            }
        }
    }
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * decade).find(|c| *c >= v).unwrap_or(10.0 * decade)
}

fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e6).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.2}")
    }
}

/// The frame every chart shares: title, y axis with grid and label.
fn frame(out: &mut String, title: &str, y_label: &str, axis: &Axis) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(title)
    );
    for tick in axis.ticks() {
        let y = axis.y(tick);
        let _ = write!(out, r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##, WIDTH - RIGHT);
        let _ = write!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, y + 4.0, number(tick));
    }
    let _ = write!(
        out,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(y_label)
    );
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#333"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#333"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
}

/// A dashed goal line across the plot, drawn last so that nothing hides it.
fn goal_line(out: &mut String, axis: &Axis, goal: Option<&GoalLine>) {
    if let Some(goal) = goal {
        let y = axis.y(goal.value);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#2ca02c" stroke-width="2" stroke-dasharray="8 4"/><text x="{}" y="{:.1}" fill="#2ca02c">{}</text>"##,
            WIDTH - RIGHT,
            LEFT + 6.0,
            y - 6.0,
            escape(&goal.label)
        );
    }
}

fn x_of(i: usize, n: usize) -> f64 {
    let plot = WIDTH - LEFT - RIGHT;
    LEFT + plot * (i as f64 + 0.5) / n.max(1) as f64
}

impl LineChart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let values = self.series.iter().flat_map(|s| s.values.iter().flatten().copied());
        let axis = Axis::covering(self.scale, values.chain(self.goal.iter().map(|g| g.value)));
        let mut out = String::new();
        frame(&mut out, &self.title, &self.y_label, &axis);
        let n = self.categories.len();
        for (i, category) in self.categories.iter().enumerate() {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x_of(i, n),
                HEIGHT - BOTTOM + 18.0,
                escape(category)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            HEIGHT - 16.0,
            escape(&self.x_label)
        );
        for (k, series) in self.series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let points: Vec<(f64, f64)> = series
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (x_of(i, n), axis.y(v))))
                .collect();
            let path: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let dash = if series.dashed { r#" stroke-dasharray="5 4""# } else { "" };
            let _ = write!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for (x, y) in &points {
                let _ = write!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#);
            }
            let ly = TOP + 10.0 + 20.0 * k as f64;
            let _ = write!(
                out,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
                WIDTH - RIGHT + 6.0,
                WIDTH - RIGHT + 30.0,
                WIDTH - RIGHT + 36.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        goal_line(&mut out, &axis, self.goal.as_ref());
        out.push_str("</svg>\n");
        out
    }
}

impl BarChart {
    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let values = self.bars.iter().flat_map(|b| [b.value].into_iter().chain(b.whisker.map(|w| w.1)));
        let axis = Axis::covering(self.scale, values.chain(self.goal.iter().map(|g| g.value)));
        let mut out = String::new();
        frame(&mut out, &self.title, &self.y_label, &axis);
        let n = self.bars.len();
        let width = (WIDTH - LEFT - RIGHT) / n.max(1) as f64 * 0.6;
        for (i, bar) in self.bars.iter().enumerate() {
            let x = x_of(i, n);
            let y = axis.y(bar.value);
            let color = COLORS[i % COLORS.len()];
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="{color}" opacity="0.85"/>"#,
                x - width / 2.0,
                (HEIGHT - BOTTOM - y).max(0.0)
            );
            if let Some((lo, hi)) = bar.whisker {
                let (y1, y2) = (axis.y(lo), axis.y(hi));
                let _ = write!(
                    out,
                    r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y1:.1}" y2="{y2:.1}" stroke="#333"/><line x1="{:.1}" x2="{:.1}" y1="{y2:.1}" y2="{y2:.1}" stroke="#333"/><line x1="{:.1}" x2="{:.1}" y1="{y1:.1}" y2="{y1:.1}" stroke="#333"/>"##,
                    x - 5.0,
                    x + 5.0,
                    x - 5.0,
                    x + 5.0
                );
            }
            // Above the bar and its whisker, whichever is higher.
            let top = bar.whisker.map_or(y, |(_, hi)| y.min(axis.y(hi)));
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                top - 6.0,
                number(bar.value)
            );
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
                HEIGHT - BOTTOM + 18.0,
                escape(&bar.label)
            );
        }
        goal_line(&mut out, &axis, self.goal.as_ref());
        out.push_str("</svg>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.93), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(2.1), 2.5);
        assert_eq!(nice_ceiling(420.0), 500.0);
    }

    #[test]
    fn log_axes_span_whole_decades_and_map_monotonically() {
        let axis = Axis::covering(Scale::Log, [3.0, 250.0, 0.0, -1.0].into_iter());
        assert_eq!((axis.lo, axis.hi), (1.0, 1000.0));
        assert_eq!(axis.ticks(), [1.0, 10.0, 100.0, 1000.0]);
        assert!(axis.y(10.0) > axis.y(100.0), "larger values are higher up");
        assert_eq!(axis.y(1.0), HEIGHT - BOTTOM);
        assert_eq!(axis.y(1000.0), TOP);
    }

    #[test]
    fn charts_are_well_formed_and_escape_text() {
        let chart = LineChart {
            title: "a <b> & c".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            categories: vec!["0".into(), "1 ms".into()],
            series: vec![Series { name: "ring".into(), values: vec![Some(1.0), None], dashed: false }],
            scale: Scale::Linear,
            goal: Some(GoalLine { value: 0.9, label: "goal".into() }),
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c") && !svg.contains("<b>"));
        assert_eq!(svg.matches("<circle").count(), 1, "a missing value draws no point");
        let bars = BarChart {
            title: "t".into(),
            y_label: "y".into(),
            bars: vec![Bar { label: "irq".into(), value: 12.0, whisker: Some((10.0, 15.0)) }],
            scale: Scale::Log,
            goal: None,
        };
        let svg = bars.render();
        assert_eq!(svg.matches("<rect").count(), 2, "background and one bar");
    }
}
