//! The SVG charts of the Markdown summary: latency distribution, deliveries over
//! time, server RSS over time. Plain SVG text, no plotting dependency.

use std::fmt::Write as _;

use crate::hist::Histogram;
use crate::report::Measurement;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Appends a line through `points`, given as fractions (0..=1) of the plot area.
fn polyline(body: &mut String, series: usize, points: impl Iterator<Item = (f64, f64)>) {
    let mut pts = String::new();
    for (fx, fy) in points {
        let x = PAD + fx * (W - 20.0 - PAD);
        let y = H - PAD - fy * (H - PAD - 30.0);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        body,
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{pts}\"/>",
        COLORS[series % COLORS.len()]
    );
}
const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 56.0;

fn svg_frame(title: &str, x_label: &str, y_label: &str, body: &str, legend: &[&str]) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        W / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD,
        W - 20.0,
        H - PAD
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"30\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>",
        W / 2.0,
        H - 14.0
    );
    let _ = writeln!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{y_label}</text>", H / 2.0, H / 2.0);
    s.push_str(body);
    for (i, name) in legend.iter().enumerate() {
        let y = 40.0 + i as f64 * 16.0;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>", W - 170.0, y - 9.0, COLORS[i % COLORS.len()], W - 155.0, y);
    }
    s.push_str("</svg>\n");
    s
}

fn axis_ticks(
    s: &mut String,
    x_max: f64,
    y_max: f64,
    x_fmt: &dyn Fn(f64) -> String,
    y_fmt: &dyn Fn(f64) -> String,
) {
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let x = PAD + f * (W - 20.0 - PAD);
        let y = H - PAD - f * (H - PAD - 30.0);
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            H - PAD + 14.0,
            x_fmt(f * x_max)
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            PAD - 4.0,
            y + 3.0,
            y_fmt(f * y_max)
        );
    }
}

/// Cumulative distribution of the systems' histograms (log-scaled x axis in ms).
pub fn latency_svg(systems: &[&Measurement], title: &str, x_label: &str, y_label: &str) -> String {
    let series: Vec<(&str, &Histogram)> = systems
        .iter()
        .map(|m| (m.system.as_str(), &m.hist))
        .collect();
    latency_series_svg(&series, title, x_label, y_label)
}

/// Cumulative distribution of named histograms (log-scaled x axis in ms).
pub fn latency_series_svg(
    series: &[(&str, &Histogram)],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> String {
    let max_us = series
        .iter()
        .map(|(_, h)| h.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let lx = |us: f64| (us.max(1.0)).log10() / max_us.log10();
    let mut body = String::new();
    for i in 0..=4 {
        let us = 10f64.powf(max_us.log10() * i as f64 / 4.0);
        let x = PAD + i as f64 / 4.0 * (W - 20.0 - PAD);
        let _ = writeln!(
            body,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{:.3}</text>",
            H - PAD + 14.0,
            us / 1000.0
        );
        let y = H - PAD - i as f64 / 4.0 * (H - PAD - 30.0);
        let _ = writeln!(
            body,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}%</text>",
            PAD - 4.0,
            y + 3.0,
            i * 25
        );
    }
    for (i, (_, h)) in series.iter().enumerate() {
        let total = h.count().max(1) as f64;
        let mut seen = 0u64;
        let points = h.buckets().into_iter().map(|(lb, c)| {
            seen += c;
            (lx(lb as f64), seen as f64 / total)
        });
        polyline(&mut body, i, points);
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    svg_frame(title, x_label, y_label, &body, &names)
}

/// The systems' timelines: a count over time (messages received, clients back).
pub fn timeline_svg(systems: &[&Measurement], title: &str, x_label: &str, y_label: &str) -> String {
    let t_max = systems
        .iter()
        .filter_map(|m| m.timeline.last().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = systems
        .iter()
        .filter_map(|m| m.timeline.last().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut body = String::new();
    axis_ticks(&mut body, t_max, y_max, &|v| format!("{v:.1}"), &|v| {
        format!("{v:.0}")
    });
    for (i, m) in systems.iter().enumerate() {
        let points = m
            .timeline
            .iter()
            .map(|(t, n)| (t / t_max, *n as f64 / y_max));
        polyline(&mut body, i, points);
    }
    let names: Vec<&str> = systems.iter().map(|m| m.system.as_str()).collect();
    svg_frame(title, x_label, y_label, &body, &names)
}

/// Server RSS over time (slow scenario).
pub fn rss_svg(systems: &[&Measurement]) -> String {
    let t_max = systems
        .iter()
        .filter_map(|m| m.rss_timeline.last().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = systems
        .iter()
        .flat_map(|m| m.rss_timeline.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1048576.0;
    let mut body = String::new();
    axis_ticks(&mut body, t_max, y_max, &|v| format!("{v:.0}"), &|v| {
        format!("{v:.0}")
    });
    for (i, m) in systems.iter().enumerate() {
        let points = m
            .rss_timeline
            .iter()
            .map(|(t, b)| (t / t_max, *b as f64 / 1048576.0 / y_max));
        polyline(&mut body, i, points);
    }
    let names: Vec<&str> = systems.iter().map(|m| m.system.as_str()).collect();
    svg_frame(
        "Server RSS: pushes to slow readers, then after they left",
        "seconds since the first push",
        "RSS, MiB",
        &body,
        &names,
    )
}

/// Horizontal bars, one per system, labelled with `value` in `unit`: a figure
/// (memory per connection, CPU per delivery) against the peers.
pub fn bars_svg(title: &str, unit: &str, bars: &[(&str, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max).max(1e-9);
    let row = 34.0;
    let height = 60.0 + row * bars.len() as f64;
    let (left, right) = (130.0, 110.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    for (i, (name, value)) in bars.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let w = (W - left - right) * value / max;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>\n<text x=\"{}\" y=\"{}\">{} {}</text>",
            left - 8.0,
            y + 16.0,
            escape(name),
            row - 10.0,
            COLORS[i % COLORS.len()],
            left + w + 6.0,
            y + 16.0,
            format_value(*value),
            escape(unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A figure with thousands separated and no more than 3 significant decimals.
fn format_value(v: f64) -> String {
    if v >= 100.0 {
        let n = v.round() as u64;
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

/// Text for SVG: `&`, `<` and `>` escaped.
fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod bar_tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_label_each_value() {
        let svg = bars_svg(
            "RSS <per> connection",
            "B",
            &[("herald", 2679.0), ("nats-server", 24461.0), ("x", 0.5)],
        );
        assert!(svg.contains("RSS &lt;per&gt; connection"));
        assert!(
            svg.contains(">2,679 B<") && svg.contains(">24,461 B<") && svg.contains(">0.50 B<"),
            "{svg}"
        );
        // The largest fills the plot width (720 - 130 - 110).
        assert!(svg.contains("width=\"480.0\""), "{svg}");
        assert_eq!(svg.matches("<rect x=\"130\"").count(), 3);
    }
}
