//! PNG charts for the benchmark tool: three kinds, each 900x500 on white.
//!
//! - [`latency_cdf`]: one CDF line per series. A CDF shows the whole
//!   distribution (median, tail, outliers) without choosing histogram bins,
//!   and several runs overlay cleanly. The x axis turns logarithmic when the
//!   samples span more than 100x, so a long tail does not squash the body.
//! - [`throughput`]: rate over time with red vertical marks for events (a
//!   process killed or restarted) so a dip can be read against its cause.
//! - [`bars`]: one horizontal bar per value with the number printed on it;
//!   horizontal so long labels ("post c=64 baseline") never overlap.
//!
//! Everything is pure Rust: plotters draws into an RGB buffer, the `png`
//! crate encodes it and the text uses DejaVu Sans embedded in the binary
//! (the `dejavu` crate), so no system fonts or C libraries are needed.
//! Bad input (empty, NaN, infinite, all zeros) never panics: non-finite
//! values (and any beyond ±1e15) are dropped, degenerate ranges are widened,
//! and a chart with nothing to show says "no data".

use std::error::Error;
use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::register_font;

/// One named set of samples (e.g. latencies in milliseconds).
pub struct Series {
    pub label: String,
    pub values: Vec<f64>,
}

const W: u32 = 900;
const H: u32 = 500;
const TITLE: u32 = 24;
const TEXT: u32 = 16;
/// Values beyond this are dropped: plotters' range arithmetic overflows on
/// f64::MAX-sized spans, and no benchmark measures anything that large.
const LIMIT: f64 = 1e15;
/// A CDF line needs no more points than the chart has pixels to show them.
const MAX_CDF_POINTS: usize = 2000;

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type Res = Result<(), Box<dyn Error>>;

/// Latency distribution: one line per series, as a CDF — x = latency (log
/// scale if the spread is > 100x, else linear), y = percentile 0..100.
/// The legend gives each series' label, sample count, p50 and p99.
pub fn latency_cdf(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<(), String> {
    // Sorted finite samples per series; empty series stay so colors stay stable.
    let sorted: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let mut v: Vec<f64> = s.values.iter().copied().filter(|v| usable(*v)).collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let all = || sorted.iter().flatten().copied();
    let (lo, hi) = (
        all().fold(f64::INFINITY, f64::min),
        all().fold(f64::NEG_INFINITY, f64::max),
    );
    let min_pos = all().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    render(path, |root| {
        let root = titled(root, title)?;
        if lo > hi {
            return no_data(&root);
        }
        if min_pos.is_finite() && hi / min_pos > 100.0 {
            // Zero or negative samples cannot sit on a log axis: clamp them to
            // its left edge so they still count in the percentiles. The axis
            // spans at most 12 decades: plotters' tick code never returns
            // when hi/lo overflows (e.g. 1e15 over a subnormal 1e-320).
            let floor = min_pos.max(hi * 1e-12);
            let x = (floor..hi).log_scale();
            cdf_chart(&root, x, floor, x_label, series, &sorted)
        } else {
            // A little room at both ends keeps the first and last steps off the axes.
            let pad = (hi - lo) * 0.02;
            let x = widen(lo - pad, hi + pad);
            cdf_chart(&root, x, lo, x_label, series, &sorted)
        }
    })
}

/// Throughput over time: points (t seconds since start, rate per second) as a
/// line, with vertical marker lines at `marks` (t seconds, label, e.g.
/// "kill 1") drawn in red with their label.
pub fn throughput(
    path: &Path,
    title: &str,
    y_label: &str,
    points: &[(f64, f64)],
    marks: &[(f64, String)],
) -> Result<(), String> {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(t, r)| usable(t) && usable(r))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let marks: Vec<&(f64, String)> = marks.iter().filter(|m| usable(m.0)).collect();
    let ts = pts.iter().map(|p| p.0).chain(marks.iter().map(|m| m.0));
    // Time starts at 0 (the run's start) unless the data says otherwise.
    let (t0, t1) = ts.fold((0.0, f64::NEG_INFINITY), |(a, b), t| {
        (f64::min(a, t), f64::max(b, t))
    });
    // Rates are drawn from 0 so that a dip is not exaggerated by the axis.
    let (r0, r1) = pts
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (f64::min(a, p.1), f64::max(b, p.1)));
    render(path, |root| {
        let root = titled(root, title)?;
        if t1 == f64::NEG_INFINITY {
            return no_data(&root);
        }
        // Headroom above the data holds the mark labels.
        let head = if marks.is_empty() { 1.1 } else { 1.25 };
        let (x, y) = (widen(t0, t1), widen(r0, r1 * head));
        let (y_lo, y_hi) = (y.start, y.end);
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc(y_label)
            .axis_desc_style(("sans-serif", TEXT))
            .label_style(("sans-serif", TEXT - 2))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;
        let line = ShapeStyle::from(&BLUE).stroke_width(2);
        chart.draw_series(LineSeries::new(pts.iter().copied(), line))?;
        if pts.len() < 50 {
            // Few points: show each one, or a single sample would be invisible.
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
        }
        let red = ShapeStyle::from(&RED).stroke_width(2);
        let font = ("sans-serif", TEXT).into_font().color(&RED);
        for (i, (t, label)) in marks.iter().enumerate() {
            chart.draw_series([PathElement::new(vec![(*t, y_lo), (*t, y_hi)], red)])?;
            // Stagger labels so marks close in time do not print over each other.
            let dy = 4 + 20 * (i as i32 % 4);
            chart.draw_series([
                EmptyElement::at((*t, y_hi)) + Text::new(label.clone(), (6, dy), font.clone())
            ])?;
        }
        Ok(())
    })
}

/// Horizontal bars, one per (label, value) from top to bottom, the value
/// printed at the bar's end; e.g. posts/s of `echo` vs `post` at each
/// concurrency, or a measured value beside its baseline. `y_label` names the
/// value axis, which runs horizontally. A non-finite value gets no bar and
/// reads "n/a".
pub fn bars(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<(), String> {
    // Bars grow from 0, so the axis always includes it.
    let (lo, hi) = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| usable(*v))
        .fold((0.0, 0.0), |(a, b), v| (f64::min(a, v), f64::max(b, v)));
    let n = bars.len() as f64;
    render(path, |root| {
        let root = titled(root, title)?;
        if bars.is_empty() {
            return no_data(&root);
        }
        // Room for the longest label on the left and the printed value on the right.
        let small = ("sans-serif", TEXT - 2).into_text_style(&root);
        let longest = bars
            .iter()
            .map(|b| text_width(&root, &b.0, &small))
            .max()
            .unwrap_or(0);
        let x = widen(lo, hi + (hi - lo) * 0.15);
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(longest.clamp(30, W / 3) + 15)
            .build_cartesian_2d(x, -0.5..n - 0.5)?;
        // Bar i is centred on y = n-1-i so the first bar is at the top; only
        // ticks at those whole numbers get a label.
        let row = |y: f64| n - 1.0 - y.round();
        let label = |y: &f64| {
            if (y - y.round()).abs() < 1e-6 && (0.0..n).contains(&row(*y)) {
                bars[row(*y) as usize].0.clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len())
            .x_desc(y_label)
            .axis_desc_style(("sans-serif", TEXT))
            .label_style(("sans-serif", TEXT - 2))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&label)
            .draw()?;
        let font = ("sans-serif", TEXT).into_font();
        for (i, (_, v)) in bars.iter().enumerate() {
            let y = row(i as f64);
            let (len, text) = if usable(*v) {
                (*v, fmt_num(*v))
            } else {
                (0.0, "n/a".to_string())
            };
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series([Rectangle::new(
                [(0.0, y - 0.4), (len, y + 0.4)],
                color.filled(),
            )])?;
            // The value goes right of the bar's end (or of the axis, for negatives).
            let at = (len.max(0.0), y);
            chart.draw_series([
                EmptyElement::at(at) + Text::new(text, (5, -(TEXT as i32) / 2), font.clone())
            ])?;
        }
        Ok(())
    })
}

/// Draws one CDF chart on x axis `x`; samples below `floor` are drawn at it.
fn cdf_chart<X>(
    root: &Area,
    x: X,
    floor: f64,
    x_label: &str,
    series: &[Series],
    sorted: &[Vec<f64>],
) -> Res
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("percentile")
        .axis_desc_style(("sans-serif", TEXT))
        .label_style(("sans-serif", TEXT - 2))
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_num(*v))
        .draw()?;
    for (i, (s, v)) in series.iter().zip(sorted).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = v.len();
        // A staircase: at each sample the fraction jumps from i/n to (i+1)/n.
        // Long series are thinned, always keeping the last (maximum) sample.
        let step = n.div_ceil(MAX_CDF_POINTS).max(1);
        let idx = (0..n).step_by(step).chain(n.checked_sub(1));
        let pts = idx.flat_map(|k| {
            let x = v[k].max(floor);
            [
                (x, 100.0 * k as f64 / n as f64),
                (x, 100.0 * (k + 1) as f64 / n as f64),
            ]
        });
        let legend = if n == 0 {
            format!("{} (no samples)", s.label)
        } else {
            format!(
                "{}  n={} p50={} p99={}",
                s.label,
                n,
                fmt_num(pct(v, 0.5)),
                fmt_num(pct(v, 0.99))
            )
        };
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(legend)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", TEXT))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Registers the embedded font once per process; every chart needs it,
/// because plotters' `ab_glyph` backend never looks at the system's fonts.
fn font() -> Result<(), String> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| "embedded font failed to load".to_string())
}

/// Draws on a white canvas with `draw`, then writes it to `path` as PNG.
/// Encoding ourselves (not via plotters' `image` encoder) keeps the
/// dependency tree small and makes the output PNG whatever the extension.
fn render(path: &Path, draw: impl FnOnce(&Area) -> Res) -> Result<(), String> {
    font()?;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| format!("drawing {}: {e}", path.display()))?;
        root.present().map_err(|e| e.to_string())?;
    }
    let file = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let write = |enc: png::Encoder<_>| enc.write_header()?.write_image_data(&buf);
    write(enc).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Draws the title and returns the area below it.
fn titled<'a>(root: &Area<'a>, title: &str) -> Result<Area<'a>, Box<dyn Error>> {
    Ok(root.titled(title, ("sans-serif", TITLE))?)
}

fn no_data(root: &Area) -> Res {
    let (w, h) = root.dim_in_pixel();
    let style = ("sans-serif", TITLE).into_font().color(&BLACK.mix(0.5));
    let style = style.into_text_style(root);
    let text = "no data";
    let x = w as i32 / 2 - text_width(root, text, &style) as i32 / 2;
    root.draw_text(text, &style, (x, h as i32 / 2))?;
    Ok(())
}

fn text_width(root: &Area, text: &str, style: &TextStyle) -> u32 {
    root.estimate_text_size(text, style).map_or(0, |(w, _)| w)
}

/// Values a chart can place: finite and not absurdly large.
fn usable(v: f64) -> bool {
    v.is_finite() && v.abs() <= LIMIT
}

/// An axis range of non-zero width: a single value gets 10% room on both
/// sides (at least 1e-6, as plotters' ticks misbehave on tinier spans).
fn widen(lo: f64, hi: f64) -> Range<f64> {
    if hi > lo {
        lo..hi
    } else {
        let pad = (lo.abs() * 0.1).max(1e-6);
        lo - pad..hi + pad
    }
}

/// Nearest-rank percentile of sorted, non-empty `v`, `p` in 0..=1.
fn pct(v: &[f64], p: f64) -> f64 {
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// About three significant digits: "0.012", "1.23", "2.5", "123", "12345", "1.23e6".
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else {
        let decimals = (2.0 - a.log10().floor()).clamp(0.0, 3.0) as usize;
        // Tick labels read better as "10" and "2.5" than "10.0" and "2.50".
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
    }

    fn s(label: &str, values: Vec<f64>) -> Series {
        Series {
            label: label.to_string(),
            values,
        }
    }

    #[test]
    fn latency_cdf_draws_any_input() {
        let dir = tempfile::tempdir().unwrap();
        let wide: Vec<f64> = (1..=1000).map(|i| 0.1 * 1.01f64.powi(i)).collect();
        let narrow: Vec<f64> = (0..5000).map(|i| 2.0 + (i % 97) as f64 / 50.0).collect();
        let cases = [
            (
                "log",
                vec![s("wide", wide.clone()), s("narrow", narrow.clone())],
            ),
            ("linear", vec![s("narrow", narrow)]),
            ("no_series", vec![]),
            ("empty", vec![s("empty", vec![])]),
            ("one", vec![s("one", vec![3.5])]),
            ("zeros", vec![s("zeros", vec![0.0; 10])]),
            ("zeros_and_wide", vec![s("z", vec![0.0, 0.0]), s("w", wide)]),
            (
                "nan",
                vec![s("nan", vec![f64::NAN, f64::INFINITY, 1.0, -2.0, f64::MAX])],
            ),
            ("only_nan", vec![s("nan", vec![f64::NAN])]),
        ];
        for (name, series) in cases {
            let path = dir.path().join(format!("cdf_{name}.png"));
            latency_cdf(&path, "latency", "latency (ms)", &series).unwrap();
            assert!(is_png(&path), "{name}");
        }
    }

    #[test]
    fn throughput_draws_any_input() {
        let dir = tempfile::tempdir().unwrap();
        let pts: Vec<(f64, f64)> = (0..120)
            .map(|i| (i as f64 * 0.5, 900.0 + 100.0 * (i as f64 / 7.0).sin()))
            .collect();
        let marks = vec![
            (20.0, "kill 1".to_string()),
            (21.0, "restart 1".to_string()),
            (f64::NAN, "bad".to_string()),
        ];
        let cases = [
            ("normal", pts.clone(), marks.clone()),
            ("empty", vec![], vec![]),
            ("marks_only", vec![], marks),
            ("one", vec![(1.0, 5.0)], vec![]),
            ("zeros", vec![(0.0, 0.0); 4], vec![]),
            (
                "nan",
                vec![(f64::NAN, 1.0), (1.0, f64::INFINITY), (2.0, -3.0)],
                vec![],
            ),
        ];
        for (name, points, marks) in cases {
            let path = dir.path().join(format!("tp_{name}.png"));
            throughput(&path, "throughput", "posts/s", &points, &marks).unwrap();
            assert!(is_png(&path), "{name}");
        }
    }

    #[test]
    fn bars_draw_any_input() {
        let dir = tempfile::tempdir().unwrap();
        let b = |l: &str, v: f64| (l.to_string(), v);
        let cases = [
            (
                "normal",
                vec![
                    b("echo c=1", 1200.0),
                    b("post c=1", 800.5),
                    b("post c=64 baseline", 15000.0),
                ],
            ),
            ("empty", vec![]),
            ("one", vec![b("only", 42.0)]),
            ("zeros", vec![b("a", 0.0), b("b", 0.0)]),
            (
                "nan_negative",
                vec![b("nan", f64::NAN), b("neg", -5.0), b("pos", 10.0)],
            ),
        ];
        for (name, bars_) in cases {
            let path = dir.path().join(format!("bars_{name}.png"));
            bars(&path, "bars", "posts/s", &bars_).unwrap();
            assert!(is_png(&path), "{name}");
        }
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/dir/x.png");
        assert!(bars(&path, "t", "v", &[("a".to_string(), 1.0)]).is_err());
    }

    #[test]
    fn formats_and_percentiles() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12345.0), "12345");
        assert_eq!(fmt_num(0.01234), "0.012");
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            (pct(&v, 0.5), pct(&v, 0.99), pct(&v, 1.0)),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(pct(&[7.0], 0.99), 7.0);
    }
}
