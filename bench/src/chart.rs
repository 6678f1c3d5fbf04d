//! The PNG chart: per workload, throughput and p99 latency against the
//! number of clients, one line per (system, level, batch).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::level::{Level, System, Workload};
use crate::report::{Agg, RunKey};

/// Where Debian's fonts-dejavu-core puts the font the chart's text uses.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 380;
/// The column at the right that holds each row's legend.
const LEGEND_WIDTH: u32 = 230;

/// Loads a TrueType font for the chart's text. `None` (with the reason)
/// when it cannot: the chart is then drawn without text.
pub fn load_font(path: &Path) -> Result<&'static [u8], String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The font registry wants 'static bytes; one font per process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
    Ok(bytes)
}

/// One line of the chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub system: System,
    pub level: Level,
    pub batch: u32,
}

impl SeriesKey {
    pub fn label(&self, workload: Workload) -> String {
        match workload {
            Workload::Ingest => format!("{} {} b{}", self.system, self.level, self.batch),
            _ if self.system == System::Etcd && self.level == Level::Strong => "etcd put".into(),
            _ => format!("{} {}", self.system, self.level),
        }
    }
}

/// A point of a line: (clients, throughput, p99 ms).
pub type Point = (f64, f64, f64);
/// The lines of one workload's panels.
pub type Lines = BTreeMap<SeriesKey, Vec<Point>>;

/// Per workload, per series, the points, ordered by clients.
pub fn series(aggs: &BTreeMap<RunKey, Agg>) -> BTreeMap<Workload, Lines> {
    let mut out: BTreeMap<Workload, Lines> = BTreeMap::new();
    for (key, agg) in aggs.iter().filter(|(_, agg)| agg.measured()) {
        let series = SeriesKey {
            system: key.system,
            level: key.level,
            batch: key.batch,
        };
        out.entry(key.workload)
            .or_default()
            .entry(series)
            .or_default()
            .push((f64::from(key.clients), agg.throughput, agg.p99_ms));
    }
    for lines in out.values_mut() {
        for points in lines.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    out
}

fn base_color(key: &SeriesKey) -> RGBColor {
    match (key.system, key.level) {
        (System::Etcd, Level::Serializable) => RGBColor(255, 127, 14),
        (System::Etcd, _) => RGBColor(214, 39, 40),
        (_, Level::Strong | Level::Linearizable) => RGBColor(31, 119, 180),
        (_, Level::Local | Level::Eventual) => RGBColor(44, 160, 44),
        (_, Level::StrongOrLocal { .. } | Level::Bounded { .. }) => RGBColor(148, 103, 189),
        (_, Level::LocalCoalesced) => RGBColor(23, 190, 207),
        _ => RGBColor(140, 86, 75),
    }
}

/// Smaller ingest batches get lighter shades of their series' color.
fn color(key: &SeriesKey, batches: &[u32]) -> RGBColor {
    let base = base_color(key);
    let rank = batches
        .iter()
        .rev()
        .position(|&b| b == key.batch)
        .unwrap_or(0);
    let lighten = (rank as f64 * 0.3).min(0.6);
    let mix = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * lighten).round() as u8;
    RGBColor(mix(base.0), mix(base.1), mix(base.2))
}

/// A log-scale range around `values` (positive ones), padded by a factor.
fn log_bounds(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let positive: Vec<f64> = values.filter(|v| *v > 0.0 && v.is_finite()).collect();
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = positive.iter().copied().fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (1.0, 10.0);
    }
    (lo / pad, hi * pad)
}

/// Draws one panel: `$y` is the y range (linear or log), `$pick` chooses
/// the metric of a point. A macro because the two y coordinate types differ.
macro_rules! panel {
    ($area:expr, $title:expr, $y:expr, $pick:expr, $clients:expr, $lines:expr, $batches:expr,
     $with_text:expr) => {{
        let clients: &[u32] = $clients;
        let mut builder = ChartBuilder::on($area);
        builder.margin(12);
        if $with_text {
            builder
                .caption($title, (FONT_FAMILY, 20))
                .x_label_area_size(40)
                .y_label_area_size(64);
        } else {
            builder.x_label_area_size(8).y_label_area_size(8);
        }
        let mut chart = builder
            .build_cartesian_2d(-0.5..(clients.len() as f64 - 0.5), $y)
            .map_err(|e| anyhow!("{e}"))?;
        // Axis labels need a font; without one the panels have no mesh.
        if $with_text {
            chart
                .configure_mesh()
                .x_desc("clients")
                .axis_desc_style((FONT_FAMILY, 16))
                // No minor grid: easier to read, and a much smaller PNG.
                .light_line_style(WHITE)
                .x_labels(clients.len() * 2 + 1)
                .disable_x_mesh()
                .x_label_formatter(&|x| client_label(clients, *x))
                .y_label_formatter(&|y| short_number(*y))
                .label_style((FONT_FAMILY, 14))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        for (key, points) in $lines {
            let color = color(key, $batches);
            let width = if key.system == System::Etcd { 3 } else { 2 };
            let style = ShapeStyle::from(&color).stroke_width(width);
            let coords = points.iter().filter_map(|p: &Point| {
                let index = clients.iter().position(|&c| f64::from(c) == p.0)?;
                Some((index as f64, $pick(p)))
            });
            let series = chart
                .draw_series(LineSeries::new(coords, style).point_size(4))
                .map_err(|e| anyhow!("{e}"))?;
            let _ = series;
        }
    }};
}

/// Draws the chart into `path` (PNG): per workload, throughput (linear,
/// from 0) and p99 latency (log scale) at each measured client count.
/// Configurations whose every operation failed are left out. Without
/// `with_text` (no font) the axes carry no labels and there is no legend.
pub fn draw_chart(
    aggs: &BTreeMap<RunKey, Agg>,
    path: &Path,
    with_text: bool,
) -> anyhow::Result<()> {
    let data = series(aggs);
    anyhow::ensure!(!data.is_empty(), "no successful runs to chart");
    let height = ROW_HEIGHT * data.len() as u32;
    let mut pixels = vec![0u8; WIDTH as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, height)).into_drawing_area();
        draw_rows(&root, &data, with_text)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    write_png(path, &pixels, WIDTH, height).with_context(|| format!("writing {}", path.display()))
}

/// The rows of panels (and legends) on `root`.
fn draw_rows<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    data: &BTreeMap<Workload, Lines>,
    with_text: bool,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (plots, legend_column) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let areas = plots.split_evenly((data.len(), 2));
    let legends = legend_column.split_evenly((data.len(), 1));
    for (row, (workload, lines)) in data.iter().enumerate() {
        let mut batches: Vec<u32> = lines.keys().map(|k| k.batch).collect();
        batches.sort_unstable();
        batches.dedup();
        let mut clients: Vec<u32> = lines.values().flatten().map(|p| p.0 as u32).collect();
        clients.sort_unstable();
        clients.dedup();
        let all = || lines.values().flatten();
        let top = all().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
        panel!(
            &areas[row * 2],
            format!("{workload}: throughput ({})", workload.unit()),
            0.0..top,
            |p: &Point| p.1,
            &clients,
            lines,
            &batches,
            with_text
        );
        let (lo, hi) = log_bounds(all().map(|p| p.2), 1.6);
        panel!(
            &areas[row * 2 + 1],
            format!("{workload}: p99 latency (ms, log scale)"),
            (lo..hi).log_scale(),
            |p: &Point| p.2,
            &clients,
            lines,
            &batches,
            with_text
        );
        if with_text {
            draw_legend(&legends[row], *workload, lines, &batches)?;
        }
    }
    Ok(())
}

/// Writes an RGB image as a small PNG: indexed, best compression, adaptive
/// filters. A chart is mostly a few inks blended with white, so its 256 most
/// frequent colors make the palette and every other (anti-aliasing) color
/// takes the nearest of them.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    let (palette, indexed) = quantize(rgb);
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_palette(palette.concat());
    encoder.write_header()?.write_image_data(&indexed)?;
    Ok(())
}

/// At most 256 palette colors and one palette index per pixel (see
/// [`write_png`]).
pub fn quantize(rgb: &[u8]) -> (Vec<[u8; 3]>, Vec<u8>) {
    use std::collections::HashMap;
    let mut counts: HashMap<[u8; 3], u64> = HashMap::new();
    for pixel in rgb.chunks_exact(3) {
        *counts.entry([pixel[0], pixel[1], pixel[2]]).or_default() += 1;
    }
    let mut by_count: Vec<([u8; 3], u64)> = counts.into_iter().collect();
    // Most frequent first; ties by color, so the output is deterministic.
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let palette: Vec<[u8; 3]> = by_count.iter().take(256).map(|(c, _)| *c).collect();
    let distance = |a: &[u8; 3], b: &[u8; 3]| -> u32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (i32::from(*x) - i32::from(*y)).unsigned_abs().pow(2))
            .sum()
    };
    let slots: HashMap<[u8; 3], u8> = by_count
        .iter()
        .map(|(color, _)| {
            let nearest = (0..palette.len())
                .min_by_key(|&i| distance(color, &palette[i]))
                .unwrap_or(0);
            (*color, nearest as u8)
        })
        .collect();
    let indexed = rgb
        .chunks_exact(3)
        .map(|p| slots[&[p[0], p[1], p[2]]])
        .collect();
    (palette, indexed)
}

/// The label at x position `x`: the client count when `x` is (close to) the
/// index of one, else nothing.
fn client_label(clients: &[u32], x: f64) -> String {
    let index = x.round();
    if (x - index).abs() > 0.01 || index < 0.0 {
        return String::new();
    }
    clients
        .get(index as usize)
        .map_or(String::new(), |c| c.to_string())
}

/// One row's legend, in its own area so it never hides a point.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    workload: Workload,
    lines: &Lines,
    batches: &[u32],
) -> anyhow::Result<()> {
    let top = 50;
    for (i, key) in lines.keys().enumerate() {
        let y = top + 24 * i as i32;
        let color = color(key, batches);
        area.draw(&PathElement::new(
            vec![(8, y), (36, y)],
            color.stroke_width(if key.system == System::Etcd { 4 } else { 3 }),
        ))
        .map_err(|e| anyhow!("{e:?}"))?;
        area.draw(&Circle::new((22, y), 4, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?;
        area.draw(&Text::new(
            key.label(workload),
            (44, y - 8),
            (FONT_FAMILY, 15).into_font().color(&BLACK),
        ))
        .map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(())
}

/// `1.2k`, `35k`, `1.5M`, `0.8`: axis labels that fit.
pub fn short_number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 10.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::report::aggregate;

    #[test]
    fn series_group_by_workload_and_sort_by_clients() {
        let runs = vec![
            record(
                System::Capkv,
                Workload::Put,
                Level::Strong,
                64,
                1,
                4_000.0,
                20.0,
            ),
            record(
                System::Capkv,
                Workload::Put,
                Level::Strong,
                16,
                1,
                2_000.0,
                10.0,
            ),
            record(
                System::Etcd,
                Workload::Put,
                Level::Strong,
                16,
                1,
                1_000.0,
                12.0,
            ),
        ];
        let data = series(&aggregate(&runs));
        let put = &data[&Workload::Put];
        assert_eq!(put.len(), 2);
        let capkv = &put[&SeriesKey {
            system: System::Capkv,
            level: Level::Strong,
            batch: 1,
        }];
        assert_eq!(capkv, &vec![(16.0, 2_000.0, 10.0), (64.0, 4_000.0, 20.0)]);
    }

    #[test]
    fn bounds_and_labels() {
        assert_eq!(log_bounds([16.0, 64.0].into_iter(), 2.0), (8.0, 128.0));
        assert_eq!(log_bounds([0.0, f64::NAN].into_iter(), 2.0), (1.0, 10.0));
        assert_eq!(short_number(1_234.0), "1.2k");
        assert_eq!(short_number(35_000.0), "35k");
        assert_eq!(short_number(2_500_000.0), "2.5M");
        assert_eq!(short_number(0.75), "0.8");
        assert_eq!(client_label(&[1, 16, 64], 1.0), "16");
        assert_eq!(client_label(&[1, 16, 64], 1.5), "");
        assert_eq!(client_label(&[1, 16, 64], 3.0), "");
        assert_eq!(client_label(&[1, 16, 64], -0.5), "");
        let key = SeriesKey {
            system: System::Capkv,
            level: Level::Local,
            batch: 100,
        };
        assert_eq!(key.label(Workload::Ingest), "capkv local b100");
        assert_eq!(key.label(Workload::Put), "capkv local");
        // Smaller batches are lighter.
        let light = color(&SeriesKey { batch: 1, ..key }, &[1, 10, 100]);
        let full = color(&key, &[1, 10, 100]);
        assert!(light.1 > full.1);
    }

    #[test]
    fn draws_a_png_with_text_when_the_font_exists() {
        let font = Path::new(DEFAULT_FONT);
        if !font.exists() {
            eprintln!("skipped: no {DEFAULT_FONT} (apt-get install fonts-dejavu-core)");
            return;
        }
        load_font(font).expect("DejaVu loads");
        let runs = vec![
            record(
                System::Capkv,
                Workload::Ingest,
                Level::Strong,
                16,
                10,
                20_000.0,
                10.0,
            ),
            record(
                System::Capkv,
                Workload::Ingest,
                Level::Strong,
                64,
                100,
                90_000.0,
                30.0,
            ),
            record(
                System::Etcd,
                Workload::Ingest,
                Level::Strong,
                64,
                100,
                50_000.0,
                40.0,
            ),
            record(
                System::Capkv,
                Workload::Get,
                Level::Eventual,
                64,
                1,
                30_000.0,
                2.0,
            ),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chart.png");
        draw_chart(&aggregate(&runs), &path, true).expect("draws");
        assert!(std::fs::metadata(&path).expect("written").len() > 1_000);
    }

    #[test]
    fn quantizing_keeps_frequent_colors_exactly() {
        // 300 colors: white (most frequent), red, and 298 rare greys.
        let mut rgb = Vec::new();
        for _ in 0..1_000 {
            rgb.extend_from_slice(&[255, 255, 255]);
        }
        for _ in 0..500 {
            rgb.extend_from_slice(&[214, 39, 40]);
        }
        for g in 0..298u32 {
            let v = (g % 250) as u8;
            rgb.extend_from_slice(&[v, v, v.saturating_add((g / 250) as u8)]);
        }
        let (palette, indexed) = quantize(&rgb);
        assert_eq!(palette.len(), 256);
        assert_eq!(palette[0], [255, 255, 255]);
        assert_eq!(palette[1], [214, 39, 40]);
        assert_eq!(indexed.len(), rgb.len() / 3);
        assert_eq!(indexed[0], 0);
        assert_eq!(indexed[1_000], 1);
        // A color left out of the palette maps to the nearest palette color.
        let distance = |a: [u8; 3], b: &[u8]| -> i32 {
            (0..3)
                .map(|i| (i32::from(a[i]) - i32::from(b[i])).pow(2))
                .sum()
        };
        for (pixel, &slot) in rgb.chunks_exact(3).zip(&indexed) {
            let best = palette
                .iter()
                .map(|&c| distance(c, pixel))
                .min()
                .expect("palette");
            assert_eq!(distance(palette[slot as usize], pixel), best, "{pixel:?}");
        }
    }

    #[test]
    fn draws_a_png_without_text() {
        let runs = vec![
            record(
                System::Capkv,
                Workload::Put,
                Level::Strong,
                16,
                1,
                2_000.0,
                10.0,
            ),
            record(
                System::Etcd,
                Workload::Put,
                Level::Strong,
                16,
                1,
                1_000.0,
                12.0,
            ),
            record(
                System::Etcd,
                Workload::Put,
                Level::Strong,
                64,
                1,
                1_500.0,
                30.0,
            ),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chart.png");
        draw_chart(&aggregate(&runs), &path, false).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
