//! `casement report --format html`: one self-contained page (inline CSS and SVG; no script, no
//! font, no image, no link to fetch) that an operator attaches to a change ticket: per-policy
//! bars of the states, each zone's recent windows on a timeline, and the device table.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{DeviceState, Report, ZoneReport, pct, ts};

/// The colour of a state, in bars, the timeline and the table.
fn colour(s: DeviceState) -> &'static str {
    match s {
        DeviceState::Compliant => "#2e7d32",
        DeviceState::NotApplied => "#6d4c41",
        DeviceState::Rejected => "#8e24aa",
        DeviceState::Missed => "#f9a825",
        DeviceState::Failed => "#c62828",
        DeviceState::Paused => "#ef6c00",
        DeviceState::InWindow => "#1565c0",
        DeviceState::Pending => "#9e9e9e",
    }
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212121}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}\
.sub{color:#616161}.big{font-size:28px;font-weight:600}\
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #e0e0e0}\
th{background:#f5f5f5}td:first-child{white-space:nowrap}.chip{display:inline-block;padding:0 8px;border-radius:9px;color:#fff;font-size:12px}\
.legend span{margin-right:12px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}";

/// Renders the page. The device table is always on it (`_devices` is accepted for symmetry with
/// the other formats).
pub fn render(report: &Report, _devices: bool) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Casement compliance report {gen}</title><style>{STYLE}</style></head><body>\n\
         <h1>Casement compliance report</h1><div class=\"sub\">generated {gen}</div>\n\
         <p><span class=\"big\">{pc}</span> compliant &mdash; {c} of {due} devices due \
         ({t} targeted; {p} pending and {w} in their first window are not counted)</p>\n",
        gen = esc(&ts(report.generated_at)),
        pc = if report.total.percent_compliant.is_some() {
            format!("{}%", pct(report.total.percent_compliant))
        } else {
            "n/a".into()
        },
        c = report.total.compliant,
        due = report.total.targeted - report.total.pending - report.total.in_window,
        t = report.total.targeted,
        p = report.total.pending,
        w = report.total.in_window,
    );
    legend(&mut o);
    policies(&mut o, report);
    timelines(&mut o, report);
    devices(&mut o, report);
    o.push_str("</body></html>\n");
    o
}

fn legend(o: &mut String) {
    o.push_str("<div class=\"legend\">");
    for s in DeviceState::ALL {
        let _ = write!(
            o,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{}</span>",
            colour(s),
            s.as_str()
        );
    }
    o.push_str("</div>\n");
}

fn count(c: &super::Counts, s: DeviceState) -> u32 {
    match s {
        DeviceState::Compliant => c.compliant,
        DeviceState::NotApplied => c.not_applied,
        DeviceState::Rejected => c.rejected,
        DeviceState::Missed => c.missed,
        DeviceState::Failed => c.failed,
        DeviceState::Paused => c.paused,
        DeviceState::InWindow => c.in_window,
        DeviceState::Pending => c.pending,
    }
}

const BAR_W: f64 = 600.0;

fn policies(o: &mut String, report: &Report) {
    o.push_str("<h2>Policies</h2>\n");
    if report.policies.is_empty() {
        o.push_str("<p>No device carries a Casement policy.</p>\n");
        return;
    }
    o.push_str("<table><tr><th>policy</th><th>devices by state</th><th>compliant</th><th>simulated</th><th>forced</th><th>offline</th></tr>\n");
    for p in &report.policies {
        let c = &p.counts;
        let _ = write!(
            o,
            "<tr><td>{}</td><td><svg width=\"{BAR_W}\" height=\"18\" role=\"img\">",
            esc(&p.policy)
        );
        let mut x = 0.0;
        for s in DeviceState::ALL {
            let n = count(c, s);
            if n == 0 || c.targeted == 0 {
                continue;
            }
            let w = BAR_W * f64::from(n) / f64::from(c.targeted);
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"18\" fill=\"{}\"><title>{} {n}</title></rect>",
                colour(s),
                s.as_str()
            );
            if w > 28.0 {
                let _ = write!(
                    o,
                    "<text x=\"{:.1}\" y=\"13\" fill=\"#fff\" font-size=\"11\">{n}</text>",
                    x + 4.0
                );
            }
            x += w;
        }
        let _ = writeln!(
            o,
            "</svg></td><td>{} ({} of {})</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.percent_compliant.is_some() {
                format!("{}%", pct(c.percent_compliant))
            } else {
                "n/a".into()
            },
            c.compliant,
            c.targeted - c.pending - c.in_window,
            c.simulated,
            c.forced,
            c.offline
        );
    }
    o.push_str("</table>\n");
    for p in &report.policies {
        for pause in &p.pauses {
            let _ = writeln!(
                o,
                "<p>paused: {} in the window {} &ndash; {}: {} failures among {} devices exceeded max_failures {}</p>",
                esc(&p.policy),
                esc(&ts(pause.occurrence)),
                esc(&ts(pause.closes_at)),
                pause.failures,
                pause.devices,
                esc(&pause.budget)
            );
        }
    }
    for line in super::detail_lines(report) {
        let _ = writeln!(o, "<p>{}</p>", esc(&line));
    }
}

const TL_W: f64 = 1000.0;
const TL_LEFT: f64 = 220.0;

fn timelines(o: &mut String, report: &Report) {
    if report.zones.is_empty() {
        return;
    }
    o.push_str("<h2>Recent windows per zone</h2>\n<p class=\"sub\">Each bar is a window; its colours are the devices judged by it. Hatched outline: paused. The line is now.</p>\n");
    let now = report.generated_at;
    let start = report
        .zones
        .iter()
        .filter_map(|z| z.windows.first().map(|w| w.window.opens_at))
        .min()
        .unwrap_or(now);
    let end = report
        .zones
        .iter()
        .filter_map(|z| z.windows.last().map(|w| w.window.closes_at))
        .max()
        .unwrap_or(now)
        .max(now);
    let span = (end - start).num_seconds().max(1) as f64;
    let x_of = |t: DateTime<Utc>| {
        TL_LEFT + (t - start).num_seconds() as f64 / span * (TL_W - TL_LEFT - 10.0)
    };
    let row = 28.0;
    let height = row * report.zones.len() as f64 + 30.0;
    let _ = writeln!(
        o,
        "<svg width=\"{TL_W}\" height=\"{height}\" role=\"img\" font-size=\"11\">"
    );
    for (i, z) in report.zones.iter().enumerate() {
        zone_row(o, z, 4.0 + row * i as f64, &x_of);
    }
    let nx = x_of(now);
    let _ = writeln!(
        o,
        "<line x1=\"{nx:.1}\" y1=\"0\" x2=\"{nx:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-dasharray=\"3,2\"/>\
         <text x=\"{nx:.1}\" y=\"{:.1}\" text-anchor=\"end\">now {} </text>\
         <text x=\"{TL_LEFT}\" y=\"{:.1}\">{}</text></svg>",
        height - 18.0,
        height - 6.0,
        esc(&ts(now)),
        height - 6.0,
        esc(&ts(start))
    );
}

fn zone_row(o: &mut String, z: &ZoneReport, y: f64, x_of: &dyn Fn(DateTime<Utc>) -> f64) {
    let _ = write!(
        o,
        "<text x=\"0\" y=\"{:.1}\">{} · {}</text>",
        y + 13.0,
        esc(&z.policy),
        esc(&z.zone)
    );
    for w in &z.windows {
        let x0 = x_of(w.window.opens_at);
        let width = (x_of(w.window.closes_at) - x0).max(2.0);
        let total: u32 = w.states.iter().map(|(_, n)| n).sum();
        let title = format!(
            "{} – {}{}: {}",
            ts(w.window.opens_at),
            ts(w.window.closes_at),
            if w.paused { " (paused)" } else { "" },
            if total == 0 {
                "no device judged by it".to_owned()
            } else {
                w.states
                    .iter()
                    .map(|(s, n)| format!("{} {n}", s.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = write!(o, "<g><title>{}</title>", esc(&title));
        if total == 0 {
            let _ = write!(
                o,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"18\" fill=\"#e0e0e0\"/>"
            );
        } else {
            let mut yy = y;
            for (s, n) in &w.states {
                let h = 18.0 * f64::from(*n) / f64::from(total);
                let _ = write!(
                    o,
                    "<rect x=\"{x0:.1}\" y=\"{yy:.1}\" width=\"{width:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
                    colour(*s)
                );
                yy += h;
            }
        }
        if w.paused {
            let _ = write!(
                o,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"18\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"4,2\"/>",
                colour(DeviceState::Paused)
            );
        }
        o.push_str("</g>");
    }
    o.push('\n');
}

fn devices(o: &mut String, report: &Report) {
    let _ = writeln!(o, "<h2>Devices ({})</h2>", report.devices.len());
    if report.devices.is_empty() {
        return;
    }
    o.push_str("<table><tr><th>device</th><th>policy</th><th>state</th><th>zone</th><th>window judged by</th><th>last reboot</th><th>reboot kind</th><th>missed in a row</th><th>online</th><th>detail</th></tr>\n");
    for d in &report.devices {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td><span class=\"chip\" style=\"background:{}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.device),
            esc(&d.policy),
            colour(d.state),
            d.state.as_str(),
            esc(d.zone.as_deref().unwrap_or("")),
            d.last_window
                .map(|w| esc(&format!("{} – {}", ts(w.opens_at), ts(w.closes_at))))
                .unwrap_or_default(),
            d.last_reboot.map(|t| esc(&ts(t))).unwrap_or_default(),
            super::reboot_kind(d),
            d.missed_streak,
            match d.online {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            },
            esc(&match (&d.detail, &d.forced) {
                (Some(detail), Some(f)) => format!("{detail}; forced: {}", f.reason),
                (None, Some(f)) => format!("forced: {}", f.reason),
                (detail, None) => detail.clone().unwrap_or_default(),
            })
        );
    }
    o.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
