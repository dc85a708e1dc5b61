//! Latency plots as standalone SVG files, written by hand (a few dozen lines of SVG need
//! no plotting crate).
//!
//! The x axis is the percentile on the "number of nines" scale (50%, 90%, 99%, 99.9%,
//! ...), the y axis the latency in microseconds on a log scale, one line per series: the
//! usual way to show a latency distribution's tail (HdrHistogram's plotter does the same).

use std::fmt::Write as _;

/// One line on the plot: a label and `(quantile, latency_us)` points.
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 220.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The x coordinate of a quantile: its number of nines, `-log10(1 - q)`.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).max(1e-7).log10()
}

/// Render `series` as an SVG document titled `title`.
pub fn percentile_svg(title: &str, series: &[Series<'_>]) -> String {
    let all_points = series.iter().flat_map(|series| series.points.iter());
    let (mut nines_max, mut latency_min, mut latency_max) = (1.0_f64, f64::MAX, 1.0_f64);
    for &(quantile, latency_us) in all_points {
        nines_max = nines_max.max(nines(quantile));
        latency_min = latency_min.min(latency_us.max(0.1));
        latency_max = latency_max.max(latency_us);
    }
    let nines_max = nines_max.ceil();
    let decade_min = latency_min.min(latency_max).log10().floor();
    let decade_max = latency_max.log10().ceil().max(decade_min + 1.0);
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x_of = |quantile: f64| MARGIN_LEFT + plot_width * nines(quantile) / nines_max;
    let y_of = |latency_us: f64| {
        let fraction = (latency_us.max(0.1).log10() - decade_min) / (decade_max - decade_min);
        MARGIN_TOP + plot_height * (1.0 - fraction)
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>
"#,
        MARGIN_LEFT + plot_width / 2.0,
        escape(title)
    );
    for step in 0..=nines_max as u32 {
        let quantile = 1.0 - 10_f64.powi(-(step as i32));
        let x = x_of(quantile);
        let label = percentile_label(step);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{MARGIN_TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            MARGIN_TOP + plot_height,
            MARGIN_TOP + plot_height + 18.0
        );
    }
    for decade in decade_min as i32..=decade_max as i32 {
        let latency_us = 10_f64.powi(decade);
        let y = y_of(latency_us);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT + plot_width,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            microseconds_label(latency_us)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (log scale)</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 8.0,
        MARGIN_TOP + plot_height / 2.0,
        MARGIN_TOP + plot_height / 2.0
    );
    for (index, one) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> = one
            .points
            .iter()
            .map(|&(quantile, latency_us)| format!("{:.1},{:.1}", x_of(quantile), y_of(latency_us)))
            .collect();
        let legend_y = MARGIN_TOP + 16.0 * index as f64 + 8.0;
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            path.join(" "),
            WIDTH - MARGIN_RIGHT + 10.0,
            WIDTH - MARGIN_RIGHT + 30.0,
            WIDTH - MARGIN_RIGHT + 36.0,
            legend_y + 4.0,
            escape(one.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn percentile_label(nines: u32) -> String {
    match nines {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        _ => format!("99.{}%", "9".repeat(nines as usize - 2)).replace(".%", "%"),
    }
}

fn microseconds_label(latency_us: f64) -> String {
    if latency_us >= 1_000_000.0 {
        format!("{} s", latency_us / 1_000_000.0)
    } else if latency_us >= 1_000.0 {
        format!("{} ms", latency_us / 1_000.0)
    } else {
        format!("{latency_us} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_percentiles() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(4), "99.99%");
    }

    #[test]
    fn svg_has_one_line_per_series_and_escapes_labels() {
        let points = [(0.5, 10.0), (0.99, 100.0), (0.999, 1_000.0)];
        let svg = percentile_svg(
            "a <b>",
            &[
                Series {
                    label: "redis & co",
                    points: &points,
                },
                Series {
                    label: "tally",
                    points: &points,
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("redis &amp; co") && svg.contains("a &lt;b&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
