#!/usr/bin/env bash
# Walks README.md's "Try it with one real device" from a clean temporary data dir: a local hub,
# `casement device add`, one real `casement-agent run --simulate-reboot`, a policy whose window is
# open now, `apply`, `run --once`, and `report` — until the device is compliant. Loopback only
# (the hub listens on free ports and connection.env says which); bounded in time; exits non-zero
# on any failure. Binaries: $CASEMENT and $CASEMENT_AGENT, else target/debug/, else $PATH.
#
#   cargo build -p casement -p casement-agent && scripts/try-it-out.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pick() { if [ -x "$root/target/debug/$1" ]; then echo "$root/target/debug/$1"; else command -v "$1"; fi; }
CASEMENT=${CASEMENT:-$(pick casement)}
CASEMENT_AGENT=${CASEMENT_AGENT:-$(pick casement-agent)}
deadline=$((SECONDS + ${TRY_IT_OUT_TIMEOUT:-120}))

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export CASEMENT_HUB_DATA_DIR="$work/hub"
unset IOTHUB_CONNECTION_STRING CASEMENT_CA CASEMENT_ENDPOINT

step() { echo "== $*" >&2; }
until_ok() { # until_ok WHAT COMMAND...: retry COMMAND until it succeeds or the deadline passes
  local what=$1; shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "try-it-out: timed out waiting for $what" >&2; exit 1; fi
    sleep 0.5
  done
}

step "1. start the hub"
"$CASEMENT" hub --mqtts-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --https-addr 127.0.0.1:0 \
  --http-addr 127.0.0.1:0 >hub.log 2>&1 &
pids+=($!)
until_ok "the hub's connection.env" test -s "$CASEMENT_HUB_DATA_DIR/connection.env"

step "2. register a device"
"$CASEMENT" device add lab-1 --tag role=lab | tee device.txt
agent_line=$(grep '^ *casement-agent run' device.txt)

step "3. start its agent (--simulate-reboot: a workstation does not reboot)"
eval "${agent_line/casement-agent/\"\$CASEMENT_AGENT\"} --timezone UTC" >agent.log 2>&1 &
pids+=($!)

step "4. a policy whose window is open now, applied"
cat >lab.toml <<TOML
[policy]
name   = "lab"
target = "tags.role = 'lab'"

[window]
schedule = "$(date -u -d '-1 min' +'%-M %-H') * * *"
duration = "2h"
timezone = "UTC"

[reboot]
expected_duration = "5m"
TOML
"$CASEMENT" validate lab.toml
"$CASEMENT" apply lab.toml
until_ok "the agent to report its window open" \
  sh -c "'$CASEMENT' query \"SELECT deviceId FROM devices WHERE properties.reported.maintenance.window.open = true\" | grep -q lab-1"

step "5. one scheduler pass"
"$CASEMENT" run lab.toml --once --state-dir scheduler

step "6. the report"
until_ok "lab-1 to be compliant" \
  sh -c "'$CASEMENT' report --format json | grep -q '\"compliant\": *1'"
"$CASEMENT" report --devices
grep -q "SIMULATED reboot" agent.log || { echo "try-it-out: the agent did not log the simulated reboot" >&2; exit 1; }
echo "try-it-out: lab-1 rebooted (simulated) inside its window and is compliant" >&2
