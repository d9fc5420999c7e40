#!/usr/bin/env bash
# Renders `casement report --format html` from a fixture and screenshots it in headless
# Chromium, so a person can look at the page an operator attaches to a change ticket.
#
#   scripts/report-screenshot.sh [FIXTURE.json] [OUT_DIR]
#
# Defaults: scripts/fixtures/report-fixture.json (29 devices, two policies, three zones: compliant,
# not-applied, rejected, missed, failed, paused, in-window and pending devices) and
# target/report-screenshot/. Writes report.html and report.png there. Installs Debian's
# `chromium` with apt-get when it is missing (needs root). The page fetches nothing: Chromium
# runs with background networking off and the page is opened as a file.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
fixture="${1:-$here/scripts/fixtures/report-fixture.json}"
out="${2:-$here/target/report-screenshot}"
mkdir -p "$out"

if ! command -v chromium >/dev/null 2>&1; then
    echo "chromium is missing: installing Debian's chromium package" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi

cd "$here"
cargo run -q -p casement-scheduler --example report_page -- "$fixture" >"$out/report.html"
echo "wrote $out/report.html" >&2

chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --hide-scrollbars --window-size=1280,1400 \
    --screenshot="$out/report.png" "file://$out/report.html" 2>"$out/chromium.log" || {
    echo "chromium failed; its log is $out/chromium.log" >&2
    exit 1
}
echo "wrote $out/report.png" >&2
