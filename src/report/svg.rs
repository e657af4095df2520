//! The report's charts, written as plain SVG: bars (stacked when there are several series)
//! and a step line. Each has a title, labelled axes, and a tooltip (`<title>`) on every bar
//! and point with the number behind it; the page adds the same numbers as a table.
//!
//! Plain SVG rather than the plotters crate: these two kinds of chart are a few hundred
//! lines, the output can carry tooltips and CSS classes (plotters' SVG backend writes
//! neither), and nothing is added to the build.

use std::fmt::Write;

use chrono_tz::Tz;

use crate::timestamp::Timestamp;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 52.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

/// Escapes text for HTML and SVG alike.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One stacked series of a bar chart.
pub struct BarSeries<'a> {
    pub name: &'a str,
    /// The CSS class that colours it.
    pub class: &'a str,
    pub values: Vec<i64>,
}

/// A bar chart: one bar per label, its series stacked.
pub struct Bars<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub labels: Vec<String>,
    pub series: Vec<BarSeries<'a>>,
}

/// A step line: each value holds until the next.
pub struct Line<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub points: &'a [(Timestamp, i64)],
    pub tz: Tz,
    /// Said in the plot when there are no points.
    pub empty: &'a str,
}

/// A scale from 0 to a round number at or above `max`, with its tick step.
fn scale(max: i64) -> (i64, i64) {
    if max <= 0 {
        return (1, 1);
    }
    let raw = (max as f64 / 5.0).max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
        .max(1.0) as i64;
    let top = (max + step - 1) / step * step;
    (top, step)
}

fn open_svg(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = esc(title)
    );
}

/// The y axis: gridlines, tick labels and its label.
fn y_axis(out: &mut String, top: i64, step: i64, label: &str) {
    let mut v = 0;
    while v <= top {
        let y = TOP + PLOT_H - PLOT_H * v as f64 / top as f64;
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{tx}" y="{ty:.1}" text-anchor="end">{v}</text>"#,
            x2 = LEFT + PLOT_W,
            tx = LEFT - 6.0,
            ty = y + 4.0,
        );
        v += step;
    }
    let _ = write!(
        out,
        r#"<text class="axis-label" transform="translate(14 {y:.1}) rotate(-90)" text-anchor="middle">{l}</text>"#,
        y = TOP + PLOT_H / 2.0,
        l = esc(label)
    );
}

fn x_axis_label(out: &mut String, label: &str) {
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" x2="{x2}" y1="{y}" y2="{y}"/><text class="axis-label" x="{x:.1}" y="{ly}" text-anchor="middle">{l}</text>"#,
        x2 = LEFT + PLOT_W,
        y = TOP + PLOT_H,
        x = LEFT + PLOT_W / 2.0,
        ly = HEIGHT - 8.0,
        l = esc(label)
    );
}

pub fn bars(chart: &Bars) -> String {
    let mut out = String::new();
    open_svg(&mut out, chart.title);
    let n = chart.labels.len().max(1);
    let totals: Vec<i64> = (0..chart.labels.len())
        .map(|i| {
            chart
                .series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let (top, step) = scale(totals.iter().copied().max().unwrap_or(0));
    y_axis(&mut out, top, step, chart.y_label);
    let band = PLOT_W / n as f64;
    let width = (band * 0.8).max(1.0);
    for (i, label) in chart.labels.iter().enumerate() {
        let x = LEFT + band * i as f64 + (band - width) / 2.0;
        let mut base = 0;
        let tooltip = {
            let parts: Vec<String> = chart
                .series
                .iter()
                .map(|s| format!("{} {}", s.values.get(i).copied().unwrap_or(0), s.name))
                .collect();
            format!("{label}: {}", parts.join(", "))
        };
        for series in &chart.series {
            let v = series.values.get(i).copied().unwrap_or(0);
            if v <= 0 {
                continue;
            }
            let y0 = TOP + PLOT_H - PLOT_H * base as f64 / top as f64;
            let y1 = TOP + PLOT_H - PLOT_H * (base + v) as f64 / top as f64;
            let _ = write!(
                out,
                r#"<rect class="{c}" x="{x:.1}" y="{y1:.1}" width="{width:.1}" height="{h:.1}"><title>{t}</title></rect>"#,
                c = series.class,
                h = (y0 - y1).max(0.5),
                t = esc(&tooltip)
            );
            base += v;
        }
    }
    // Labels: as many as fit, evenly spaced.
    let longest = chart
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1);
    let fit = (PLOT_W / (longest as f64 * 6.5 + 8.0)).floor().max(1.0) as usize;
    let every = n.div_ceil(fit);
    for (i, label) in chart.labels.iter().enumerate().step_by(every.max(1)) {
        let _ = write!(
            out,
            r#"<text class="tick" x="{x:.1}" y="{y}" text-anchor="middle">{l}</text>"#,
            x = LEFT + band * (i as f64 + 0.5),
            y = TOP + PLOT_H + 16.0,
            l = esc(label)
        );
    }
    x_axis_label(&mut out, chart.x_label);
    if chart.series.len() > 1 {
        legend(&mut out, &chart.series);
    }
    out.push_str("</svg>");
    out
}

fn legend(out: &mut String, series: &[BarSeries]) {
    let mut x = LEFT + 8.0;
    for s in series {
        let _ = write!(
            out,
            r#"<rect class="{c}" x="{x:.1}" y="{y}" width="10" height="10"/><text class="tick" x="{tx:.1}" y="{ty}">{n}</text>"#,
            c = s.class,
            y = TOP + 2.0,
            tx = x + 14.0,
            ty = TOP + 11.0,
            n = esc(s.name)
        );
        x += 14.0 + s.name.chars().count() as f64 * 6.5 + 14.0;
    }
}

/// Local wall-clock text of `t` in `tz`.
pub fn local(t: Timestamp, tz: Tz, format: &str) -> String {
    t.to_chrono().with_timezone(&tz).format(format).to_string()
}

/// Tick steps for a time axis, in seconds.
const TIME_STEPS: [i64; 16] = [
    1, 5, 10, 30, 60, 300, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800,
    2_592_000,
];

pub fn line(chart: &Line) -> String {
    let mut out = String::new();
    open_svg(&mut out, chart.title);
    let max = chart.points.iter().map(|p| p.1).max().unwrap_or(0);
    let (top, step) = scale(max);
    y_axis(&mut out, top, step, chart.y_label);
    x_axis_label(&mut out, chart.x_label);
    let (Some(first), Some(last)) = (chart.points.first(), chart.points.last()) else {
        let _ = write!(
            out,
            r#"<text class="empty" x="{x:.1}" y="{y:.1}" text-anchor="middle">{t}</text></svg>"#,
            x = LEFT + PLOT_W / 2.0,
            y = TOP + PLOT_H / 2.0,
            t = esc(chart.empty)
        );
        return out;
    };
    let (mut t0, mut t1) = (first.0.as_millis(), last.0.as_millis());
    if t1 - t0 < 1000 {
        t0 -= 30_000;
        t1 += 30_000;
    }
    let x = |t: i64| LEFT + PLOT_W * (t - t0) as f64 / (t1 - t0) as f64;
    let y = |v: i64| TOP + PLOT_H - PLOT_H * v as f64 / top as f64;

    // Ticks at round local times.
    let span_secs = (t1 - t0) / 1000;
    let tick = TIME_STEPS
        .iter()
        .copied()
        .find(|s| span_secs / s <= 5)
        .unwrap_or(2_592_000);
    let format = if tick < 60 {
        "%H:%M:%S"
    } else if tick < 86_400 && span_secs > 86_400 {
        "%m-%d %H:%M"
    } else if tick < 86_400 {
        "%H:%M"
    } else {
        "%m-%d"
    };
    let offset_ms = first
        .0
        .to_chrono()
        .with_timezone(&chart.tz)
        .offset()
        .fix()
        .local_minus_utc() as i64
        * 1000;
    let step_ms = tick * 1000;
    let mut at = (t0 + offset_ms).div_euclid(step_ms) * step_ms - offset_ms;
    if at < t0 {
        at += step_ms;
    }
    while at <= t1 {
        if let Some(ts) = Timestamp::from_millis(at) {
            let _ = write!(
                out,
                r#"<line class="axis" x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text class="tick" x="{x:.1}" y="{ty}" text-anchor="middle">{l}</text>"#,
                x = x(at),
                y0 = TOP + PLOT_H,
                y1 = TOP + PLOT_H + 4.0,
                ty = TOP + PLOT_H + 16.0,
                l = esc(&local(ts, chart.tz, format))
            );
        }
        at += step_ms;
    }

    let mut path = String::new();
    for (i, (t, v)) in chart.points.iter().enumerate() {
        let (px, py) = (x(t.as_millis()), y(*v));
        if i == 0 {
            let _ = write!(path, "M{px:.1} {py:.1}");
        } else {
            let _ = write!(path, "H{px:.1}V{py:.1}");
        }
    }
    let _ = write!(out, r#"<path class="line" d="{path}"/>"#);
    for (t, v) in chart.points {
        let _ = write!(
            out,
            r#"<circle class="point" cx="{cx:.1}" cy="{cy:.1}" r="2.5"><title>{l}: {v}</title></circle>"#,
            cx = x(t.as_millis()),
            cy = y(*v),
            l = esc(&local(*t, chart.tz, "%Y-%m-%d %H:%M:%S %:z"))
        );
    }
    out.push_str("</svg>");
    out
}

use chrono::Offset;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_end_on_a_round_number_above_the_largest_value() {
        assert_eq!(scale(0), (1, 1));
        assert_eq!(scale(3), (3, 1));
        assert_eq!(scale(7), (8, 2));
        assert_eq!(scale(1234), (1500, 500));
        assert_eq!(scale(10_000_000), (10_000_000, 2_000_000));
    }

    #[test]
    fn text_is_escaped_in_labels_and_tooltips() {
        let svg = bars(&Bars {
            title: "a <b> & 'c'",
            x_label: "day",
            y_label: "n",
            labels: vec!["<x>".into()],
            series: vec![BarSeries {
                name: "s",
                class: "c",
                values: vec![2],
            }],
        });
        assert!(svg.contains("a &lt;b&gt; &amp; &#39;c&#39;"), "{svg}");
        assert!(svg.contains("&lt;x&gt;: 2 s"), "{svg}");
        assert!(!svg.contains("<x>"));
    }
}
