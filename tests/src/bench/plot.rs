//! The throughput chart: one group of bars per mode, one bar per placement,
//! each labelled with its Mpps. The font is DejaVu Sans from the `dejavu`
//! crate, so no system font is needed.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::{
    prelude::*,
    style::{
        FontStyle, register_font,
        text_anchor::{HPos, Pos, VPos},
    },
};

/// One bar group: the mode and its value per placement (NaN when not measured).
pub struct Group {
    pub label: String,
    pub values: Vec<f64>,
}

const COLORS: [RGBColor; 2] = [RGBColor(0x2b, 0x6c, 0xb0), RGBColor(0xe0, 0x8a, 0x1e)];

pub fn bar_chart(path: &Path, title: &str, series: &[&str], groups: &[Group]) -> Result<()> {
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("cannot load the embedded font"))?;
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.15;
    let n = groups.len().max(1);
    let width = 140 * n as u32 + 160;
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("Mpps delivered (median)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let k = series.len().max(1) as f64;
    let bar = 0.8 / k;
    for (gi, g) in groups.iter().enumerate() {
        for (si, v) in g.values.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let x0 = gi as f64 + 0.1 + si as f64 * bar;
            let color = COLORS[si % COLORS.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + bar * 0.92, *v)],
                    color.filled(),
                )))
                .map_err(|e| anyhow!("{e}"))?;
            // The value just above its bar, centred.
            let (px, py) = chart.backend_coord(&(x0 + bar * 0.46, *v));
            let style = ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            root.draw(&Text::new(format!("{v:.2}"), (px, py - 3), style))
                .map_err(|e| anyhow!("{e}"))?;
        }
        // Under the axis, centred on the group, in pixels of the whole image.
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        let style = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(g.label.clone(), (px, py + 10), style))
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (si, name) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                color.filled(),
            )))
            .map_err(|e| anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
