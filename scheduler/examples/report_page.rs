//! Renders `casement report --format html` from a fixture (twins, journal, the time), for
//! `scripts/report-screenshot.sh`; not a test.
//!
//! ```sh
//! cargo run -p casement-scheduler --example report_page -- scripts/fixtures/report-fixture.json > report.html
//! ```
//!
//! The fixture is `{"now": "<RFC 3339>", "twins": [<twin as the query returns it>...],
//! "journal": <the journal snapshot file's JSON>}`.

use casement_scheduler::fleet::TwinView;
use casement_scheduler::journal::JournalView;
use casement_scheduler::report::{self, DEFAULT_LOOKBACK, Format};
use chrono::{DateTime, Utc};
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: report_page FIXTURE.json > page.html"))?;
    let fixture: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let now: DateTime<Utc> = fixture["now"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{path}: \"now\" must be an RFC 3339 time"))?
        .parse()?;
    let views = fixture["twins"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{path}: \"twins\" must be an array"))?
        .iter()
        .map(|t| TwinView::from_value(t.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{path}: a twin: {e}"))?;
    let journal: JournalView = serde_json::from_value(fixture["journal"].clone())?;
    let r = report::build(&views, &journal, now, DEFAULT_LOOKBACK, None);
    print!("{}", report::render(&r, Format::Html, true));
    eprint!("{}", report::render(&r, Format::Table, false));
    Ok(())
}
