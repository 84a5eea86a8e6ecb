//! PNG charts of a run: the latency distribution per target (a percentile spectrum, median
//! over the rounds) and one bar chart per capacity figure (median bar, min–max whisker).
//!
//! Text is drawn with plotters' ab_glyph backend from a TTF file of the system (DejaVu Sans,
//! Debian's fonts-dejavu-core), so no font-config or freetype is linked.

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use weft_tests::bench::report::{Results, number};
use weft_tests::bench::stats::{Summary, quantile};
use weft_tests::bench::{Scenario, load::LoadReport};

/// Where Debian's fonts-dejavu-core puts its sans-serif face.
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 560);

/// A colour per target, in target order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(90, 90, 90),
    RGBColor(160, 160, 160),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The bar charts: (file, scenario, figure key, axis title).
const BARS: [(&str, Scenario, &str, &str); 4] = [
    (
        "throughput.png",
        Scenario::Throughput,
        "gbit_s",
        "Gbit/s, one iperf3 stream",
    ),
    (
        "rps-1.png",
        Scenario::Rps1,
        "rps",
        "requests/s, 1 connection",
    ),
    (
        "rps-50.png",
        Scenario::Rps50,
        "rps",
        "requests/s, 50 connections",
    ),
    ("cps.png", Scenario::Cps, "rps", "new connections/s"),
];

/// Draws every chart it has data for into `dir`; (file name, title) of each.
pub fn draw_all(results: &Results, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    load_font()?;
    let mut drawn = Vec::new();
    if results.plan.scenarios.contains(&Scenario::Latency) {
        let file = "latency.png";
        latency(results, &dir.join(file)).with_context(|| format!("drawing {file}"))?;
        drawn.push((
            file.to_owned(),
            "Latency distribution at a fixed rate".to_owned(),
        ));
    }
    for (file, scenario, key, title) in BARS {
        if results.plan.scenarios.contains(&scenario) {
            bars(results, scenario, key, title, &dir.join(file))
                .with_context(|| format!("drawing {file}"))?;
            drawn.push((
                file.to_owned(),
                format!("{title} ({})", results.plan.layout.describe()),
            ));
        }
    }
    Ok(drawn)
}

fn load_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT_FILE).with_context(|| {
        format!("reading {FONT_FILE} for chart labels (Debian package fonts-dejavu-core)")
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    if register_font(FONT, FontStyle::Normal, bytes).is_err() {
        bail!("{FONT_FILE} is not a font plotters can read");
    }
    Ok(())
}

/// x of a quantile on the spectrum axis: 0 at the median... 1 - 10^-x, so 1 = p90, 2 = p99.
fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-5).log10()).clamp(0.0, 5.0)
}

fn latency(results: &Results, path: &Path) -> anyhow::Result<()> {
    // Per target: the median over the rounds of each point of the spectrum.
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for target in &results.targets {
        let reports: Vec<LoadReport> = results
            .samples
            .iter()
            .filter(|s| s.scenario == Scenario::Latency && s.target == target.id)
            .filter_map(|s| serde_json::from_value(s.raw.clone()).ok())
            .collect();
        let Some(first) = reports.first() else {
            continue;
        };
        let points: Vec<(f64, f64)> = (0..first.percentiles.len())
            .map(|i| {
                let mut v: Vec<f64> = reports
                    .iter()
                    .filter_map(|r| r.percentiles.get(i).map(|p| p.1))
                    .collect();
                v.sort_by(f64::total_cmp);
                let q = first.percentiles[i].0;
                (nines(q), quantile(&v, 0.5).max(1.0) / 1000.0)
            })
            .collect();
        lines.push((target.label.clone(), points));
    }
    let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|x| x.1));
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if hi <= 0.0 {
        bail!("no latency data");
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Latency at {} req/s, open loop ({})",
                results.plan.latency_rate,
                results.plan.layout.describe()
            ),
            (FONT, 22),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, ((lo * 0.8)..(hi * 1.25)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".to_owned(),
            1 => "90%".to_owned(),
            2 => "99%".to_owned(),
            3 => "99.9%".to_owned(),
            4 => "99.99%".to_owned(),
            _ => "99.999%".to_owned(),
        })
        .label_style((FONT, 14))
        .draw()?;
    for (i, (label, points)) in lines.into_iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn bars(
    results: &Results,
    scenario: Scenario,
    key: &str,
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let rows: Vec<(String, Summary)> = results
        .targets
        .iter()
        .filter_map(|t| Some((t.label.clone(), results.summary(scenario, &t.id, key)?)))
        .collect();
    let hi = rows.iter().map(|(_, s)| s.max).fold(0f64, f64::max);
    if rows.is_empty() || hi <= 0.0 {
        bail!("no {key} data for {}", scenario.id());
    }
    let n = rows.len();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title} ({})", results.plan.layout.describe()),
            (FONT, 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..hi * 1.1, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(title)
        .x_label_formatter(&|x| number(*x))
        .label_style((FONT, 14))
        .draw()?;
    // Each target gets a horizontal slot, top to bottom in target order: its label and
    // median in the upper part, the bar (median) with a min–max whisker below.
    for (i, (label, s)) in rows.iter().enumerate() {
        let slot_top = (n - i) as f64;
        let bar_top = slot_top - 0.4;
        let bar_bottom = slot_top - 0.9;
        let color = PALETTE[i % PALETTE.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, bar_bottom), (s.median, bar_top)],
            color.filled(),
        )))?;
        let mid = (bar_top + bar_bottom) / 2.0;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(s.min, mid), (s.max, mid)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{label}: {}", number(s.median)),
            (hi * 0.005, slot_top - 0.05),
            (FONT, 15).into_font(),
        )))?;
    }
    root.present()?;
    Ok(())
}
