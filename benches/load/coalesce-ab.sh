#!/usr/bin/env bash
# Coalescing, one sidecar binary against another in one sitting: both run with their default
# settings (the access log at info, appended to a file) side by side in front of one simulated
# Cloudflare API (UPSTREAM_LATENCY_MS per call), and ROUNDS interleaved rounds send CLIENTS
# concurrent first lookups of a fresh key to each. The machine may be shared, so only figures from
# the same run are compared. A third row is the floor: the static ceiling (load-ceiling) with
# --gate-ms UPSTREAM_LATENCY_MS, answering every request of a burst at once when the gate opens,
# with no cache, routing or upstream work: what this machine's sockets and scheduler alone cost.
#
#   bash benches/load/coalesce-ab.sh BEFORE_BIN AFTER_BIN     # about a minute
#
# Knobs (environment): ROUNDS (5), CLIENTS (1000), UPSTREAM_LATENCY_MS (50), EXTRA_FLAGS (added to
# both sidecars, e.g. "--log-level warn"). Prints one line per round and the medians; needs the
# load tools built (cargo build --release -p zt-loadtest --bin load-upstream --bin load-ceiling
# --bin load-driver).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BINS=("$1" "$2")
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-1000}
UPSTREAM_LATENCY_MS=${UPSTREAM_LATENCY_MS:-50}
read -r -a EXTRA <<<"${EXTRA_FLAGS:-}"
ACCOUNT=023e105f4ecef8ad9ca31a8372d0c353
TOKEN=zt-bench-token-0000000000000000000000000001
LOOKUP_PATH=/client/v4/accounts/$ACCOUNT/zt_risk_scoring/integrations/reference_id/
RUN=$(mktemp -d /tmp/zt-coalesce-ab.XXXXXX)
ulimit -n 16384 2>/dev/null || true

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

free_ports() {
  python3 -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))' "$1"
}
wait_for() { # what, command...
  local what=$1
  shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "coalesce-ab.sh: $what never came up" >&2
  exit 1
}

read -r UPSTREAM_PORT COUNTERS_PORT A_PORT A_ADMIN B_PORT B_ADMIN FLOOR_PORT <<<"$(free_ports 7)"
"$ROOT/target/release/load-upstream" --port "$UPSTREAM_PORT" --counters-port "$COUNTERS_PORT" \
  --latency-ms "$UPSTREAM_LATENCY_MS" --keys $((2 * ROUNDS + 10)) --token "$TOKEN" \
  --account "$ACCOUNT" >"$RUN/upstream.out" 2>&1 &
PIDS+=($!)
wait_for "the upstream" grep -q '^READY' "$RUN/upstream.out"
read -r _ UPSTREAM_BASE _ <"$RUN/upstream.out"
PORTS=("$A_PORT" "$B_PORT")
ADMINS=("$A_ADMIN" "$B_ADMIN")
for i in 0 1; do
  "${BINS[$i]}" --listen "127.0.0.1:${PORTS[$i]}" --admin-listen "127.0.0.1:${ADMINS[$i]}" \
    --upstream "$UPSTREAM_BASE" --upstream-budget-requests 1000000000 --upstream-budget-period 1s \
    --upstream-budget-burst 1000000 "${EXTRA[@]}" >>"$RUN/sidecar-$i.log" 2>&1 &
  PIDS+=($!)
  wait_for "sidecar $i" curl -sf "http://127.0.0.1:${ADMINS[$i]}/healthz"
done

# The floor answers with a body of a hit's size (397 bytes, like Cloudflare's).
head -c 397 /dev/zero | tr '\0' 'x' >"$RUN/floor.body"
"$ROOT/target/release/load-ceiling" --port "$FLOOR_PORT" --body-file "$RUN/floor.body" \
  --header 'content-type: application/json' --gate-ms "$UPSTREAM_LATENCY_MS" >"$RUN/floor.out" 2>&1 &
PIDS+=($!)
wait_for "the gated ceiling" grep -q '^READY' "$RUN/floor.out"
PORTS+=("$FLOOR_PORT")
NAMES=("${BINS[@]}" "floor: load-ceiling --gate-ms $UPSTREAM_LATENCY_MS")

key=0
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2; do
    reference=$(printf 'ref-%07d' "$key")
    key=$((key + 1))
    "$ROOT/target/release/load-driver" coalesce --url "http://127.0.0.1:${PORTS[$i]}$LOOKUP_PATH$reference" \
      --token "$TOKEN" --clients "$CLIENTS" >"$RUN/round-$round-$i.json"
  done
done

python3 - "$RUN" "$ROUNDS" "${NAMES[@]}" <<'PY'
import json, statistics, sys
run, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i, name in enumerate(bins):
    rows = [json.load(open(f"{run}/round-{r}-{i}.json")) for r in range(1, rounds + 1)]
    for r, row in enumerate(rows, 1):
        lat = row["latency_ms"]
        print(f"r{r} {name}: answered {row['answered']}/{row['clients']}  p50 {lat['p50']:.1f}  "
              f"p99 {lat['p99']:.1f}  max {lat['max']:.1f} ms  send spread {row['send_spread_ms']:.1f} ms")
    print(f"median {name}: p50 {statistics.median(r['latency_ms']['p50'] for r in rows):.1f}  "
          f"p99 {statistics.median(r['latency_ms']['p99'] for r in rows):.1f}  "
          f"max {statistics.median(r['latency_ms']['max'] for r in rows):.1f} ms "
          f"(max range {min(r['latency_ms']['max'] for r in rows):.1f}–{max(r['latency_ms']['max'] for r in rows):.1f})")
PY
