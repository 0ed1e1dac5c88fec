//! `chart.png`: one panel per metric, one bar per case, in the case order
//! and colours of [`COLOURS`]. Drawn with plotters' bitmap backend and no
//! font (so no system font is needed); the legend is in the terminal table
//! and `results.json`.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::report::{CaseResult, Report};

/// One colour per case, in [`crate::targets::CASES`] order.
pub const COLOURS: &[RGBColor] = &[
    RGBColor(120, 120, 120), // direct
    RGBColor(31, 119, 180),  // routehub-quic
    RGBColor(44, 160, 44),   // routehub-tcp
    RGBColor(214, 39, 40),   // rathole
    RGBColor(255, 127, 14),  // rathole-noise
    RGBColor(148, 103, 189), // bore
];

type Metric = fn(&Report, &CaseResult) -> Option<f64>;

/// Panels: requests/s, p99 at the fixed rate, bulk Gbit/s, CPU per request,
/// new-connection p99, idle RSS.
const PANELS: &[Metric] = &[
    |_, c| c.rps,
    |_, c| c.fixed_rate.map(|p| p.p99_us),
    |_, c| c.bulk_gbps,
    |_, c| c.cpu_us_per_req,
    |_, c| c.connect.map(|p| p.p99_us),
    |_, c| c.rss_idle_bytes.map(|b| b as f64),
];

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let (w, h) = (1200u32, 640u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 3));
    for (panel, metric) in panels.iter().zip(PANELS) {
        let values: Vec<(usize, f64)> = crate::targets::CASES
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let c = report.cases.iter().find(|c| c.case == *name)?;
                Some((i, metric(report, c)?))
            })
            .collect();
        let max = values.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let (pw, ph) = panel.dim_in_pixel();
        let (pw, ph) = (pw as i32, ph as i32);
        let margin = 20;
        panel.draw(&Rectangle::new(
            [(margin / 2, margin / 2), (pw - margin / 2, ph - margin / 2)],
            RGBColor(200, 200, 200).stroke_width(1),
        ))?;
        if max <= 0.0 {
            continue;
        }
        let n = crate::targets::CASES.len() as i32;
        let slot = (pw - 2 * margin) / n;
        let base = ph - margin;
        let top = margin * 2;
        for (i, v) in values {
            let x0 = margin + i as i32 * slot + slot / 6;
            let x1 = x0 + slot * 2 / 3;
            let y = base - ((base - top) as f64 * v / max) as i32;
            panel.draw(&Rectangle::new(
                [(x0, y), (x1, base)],
                COLOURS[i % COLOURS.len()].filled(),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
