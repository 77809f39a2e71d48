#!/usr/bin/env bash
# The load benchmark: the sidecar as shipped (its default settings, the access log at info written
# to a file as a container runtime would) beside the same binary at `--log-level warn`, nginx
# (proxy_cache), Varnish and a static ceiling, all in front of the same simulated Cloudflare API
# (50 ms per call), on loopback, in one run.
#
#   bash benches/load/run.sh            # about 10 minutes on 2 cores; bounded at 20 minutes
#
# It installs what is missing (wrk, and nginx with set-misc and varnish when SYSTEMS or
# COALESCE_SYSTEMS name them: Debian packages), builds the
# sidecar and the three load tools of crates/zt-loadtest (load-upstream, load-ceiling, load-driver)
# in release mode, then measures:
#   1. throughput and latency of hits (wrk, 2 threads, 64 keep-alive connections, DURATION s):
#      one hot key, then KEYS keys chosen at random; requests/s, p50/p99/p99.9, CPU seconds per
#      100k answers (utime+stime of the server's processes), context switches per request,
#      upstream calls during the run, and the CPU that other processes took meanwhile (the
#      machine is shared). ROUNDS rounds, the systems interleaved in each; the report gives
#      medians;
#   2. coalescing: COALESCE_CLIENTS connections send the same first lookup at once; how many
#      reached upstream, and each waiter's latency against the upstream's 50 ms;
#   3. memory: the sidecar's VmRSS idle, after 100k and after FILL cached entries.
# Results: target/bench-results/load.json and load.md; PASS/FAIL per target on stdout. It never
# fails on a missed target (exit 0); it exits non-zero only when it cannot measure.
#
# Knobs (environment): DURATION (10), ROUNDS (3), KEYS (10000), FILL (1000000), COALESCE_CLIENTS (1000),
# UPSTREAM_LATENCY_MS (50), SYSTEMS ("ceiling sidecar sidecar-warn nginx varnish"; the peers are
# optional: SYSTEMS="ceiling sidecar sidecar-warn" measures without nginx and Varnish),
# COALESCE_SYSTEMS (the SYSTEMS among "sidecar nginx varnish"),
# PHASES ("load coalesce memory"), SIDECAR_BIN (a sidecar binary to measure instead of building
# one, for A/B comparisons of a change), WALL_LIMIT_S (1200).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/benches/load
cd "$ROOT"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-10000}
FILL=${FILL:-1000000}
COALESCE_CLIENTS=${COALESCE_CLIENTS:-1000}
UPSTREAM_LATENCY_MS=${UPSTREAM_LATENCY_MS:-50}
SYSTEMS=${SYSTEMS:-"ceiling sidecar sidecar-warn nginx varnish"}
if [[ -z ${COALESCE_SYSTEMS+set} ]]; then
  COALESCE_SYSTEMS=""
  for system in sidecar nginx varnish; do
    [[ " $SYSTEMS " == *" $system "* ]] && COALESCE_SYSTEMS+="$system "
  done
fi
# Whether a peer is measured at all; one that is not is neither installed nor started.
wanted() { [[ " $SYSTEMS $COALESCE_SYSTEMS " == *" $1 "* ]]; }
PHASES=${PHASES:-"load coalesce memory"}
WALL_LIMIT_S=${WALL_LIMIT_S:-1200}

ACCOUNT=023e105f4ecef8ad9ca31a8372d0c353
TOKEN=zt-bench-token-0000000000000000000000000001
LOOKUP_PATH=/client/v4/accounts/$ACCOUNT/zt_risk_scoring/integrations/reference_id/
OUT=$ROOT/target/bench-results
RUN=$(mktemp -d /tmp/zt-bench.XXXXXX)
chmod 755 "$RUN"
RESULTS=$RUN/results
mkdir -p "$OUT" "$RESULTS"
STARTED_AT=$(date +%s)

log() { printf '[%4ss] %s\n' "$(($(date +%s) - STARTED_AT))" "$*" >&2; }

# ---- every process started here is stopped on exit, by its own id ----
PIDS=()
track() {
  PIDS+=("$1")
  echo "$1" >>"$RUN/pids"
}
cleanup() {
  local pid
  # The watchdog's sleep first, then the watchdog, then the servers.
  if [[ -n ${WATCHDOG:-} ]]; then
    pkill -TERM -P "$WATCHDOG" 2>/dev/null || true
    kill -TERM "$WATCHDOG" 2>/dev/null || true
  fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # The simulator drops a million integrations on the way out: give everything 10 s.
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "/dev/shm/zt-bench-nginx.${RUN##*.}"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# The whole run is bounded: past WALL_LIMIT_S a watchdog stops every server this run started (so a
# running wrk or driver ends at once) and then the script itself, whose trap cleans up.
touch "$RUN/pids"
(
  sleep "$WALL_LIMIT_S"
  echo "run.sh: wall-clock limit of ${WALL_LIMIT_S}s reached" >&2
  xargs -r kill -TERM <"$RUN/pids" 2>/dev/null
  kill -TERM $$
) &
WATCHDOG=$!
disown "$WATCHDOG"

# ---- 0. tools ----
need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
if wanted nginx; then
  command -v nginx >/dev/null || need_install+=(nginx)
  [[ -f /usr/lib/nginx/modules/ngx_http_set_misc_module.so ]] ||
    need_install+=(libnginx-mod-http-ndk libnginx-mod-http-set-misc)
fi
if wanted varnish; then command -v varnishd >/dev/null || need_install+=(varnish); fi
command -v curl >/dev/null || need_install+=(curl)
command -v python3 >/dev/null || need_install+=(python3)
if ((${#need_install[@]})); then
  log "installing ${need_install[*]} (apt)"
  if [[ $(id -u) != 0 ]]; then
    echo "run.sh: needs ${need_install[*]}; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >/dev/null
fi
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < COALESCE_CLIENTS * 2 + 256)); then
  echo "run.sh: open-file limit $(ulimit -n) is too low for $COALESCE_CLIENTS clients" >&2
  exit 1
fi

# ---- 1. build ----
log "building the sidecar and the load tools (release)"
if [[ -z ${SIDECAR_BIN:-} ]]; then
  cargo build --release --quiet --bin zt-risk-sidecar
  SIDECAR_BIN=$ROOT/target/release/zt-risk-sidecar
fi
cargo build --release --quiet -p zt-loadtest --bin load-upstream --bin load-ceiling --bin load-driver
UPSTREAM_BIN=$ROOT/target/release/load-upstream
CEILING_BIN=$ROOT/target/release/load-ceiling
DRIVER_BIN=$ROOT/target/release/load-driver
for bin in "$SIDECAR_BIN" "$UPSTREAM_BIN" "$CEILING_BIN" "$DRIVER_BIN"; do
  [[ -x $bin ]] || { echo "run.sh: missing build output ($bin)" >&2; exit 1; }
done

# ---- helpers ----
free_ports() {
  python3 -c '
import socket, sys
sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
' "$1"
}

# Waits for a line starting with READY in a file, or fails after 120 s.
wait_ready() {
  local file=$1 pid=$2
  for _ in $(seq 1 1200); do
    if grep -q '^READY' "$file" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: process $pid died; see $file" >&2; cat "$file" >&2; exit 1; }
    sleep 0.1
  done
  echo "run.sh: $file never said READY" >&2
  exit 1
}

wait_http() {
  local url=$1
  for _ in $(seq 1 300); do
    if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
    sleep 0.1
  done
  echo "run.sh: $url does not answer" >&2
  exit 1
}

# utime+stime, in clock ticks, of a process and its children (nginx's and Varnish's workers).
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    if [[ -r /proc/$pid/stat ]]; then
      # Fields 14 and 15, counted after the command name (which may hold spaces).
      total=$((total + $(sed -E 's/^.*\) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    fi
  done
  echo "$total"
}
process_tree() {
  local root=$1
  echo "$root" $(pgrep -P "$root" || true)
}

# Busy ticks of the whole machine (all CPUs), to see how much CPU other processes took.
cpu_busy_total() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# Voluntary + involuntary context switches of every thread of the given processes.
ctx_switches() {
  local pid
  for pid in "$@"; do
    cat /proc/"$pid"/task/*/status 2>/dev/null
  done | awk '/ctxt_switches:/ {total += $2} END {print total + 0}'
}

upstream_reference_gets() {
  curl -s "$COUNTERS_URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["reference_get"])'
}

# Waits (at most 20 s) until no request has reached the upstream for half a second.
wait_upstream_quiet() {
  local previous current
  previous=$(upstream_reference_gets)
  for _ in $(seq 1 40); do
    sleep 0.5
    current=$(upstream_reference_gets)
    [[ $current == "$previous" ]] && return 0
    previous=$current
  done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---- 2. the upstream ----
SIM_KEYS=$((KEYS + 200))
((FILL > SIM_KEYS)) && SIM_KEYS=$FILL
read -r UPSTREAM_PORT COUNTERS_PORT CEILING_PORT SIDECAR_PORT SIDECAR_ADMIN SIDECAR_WARN_PORT \
  SIDECAR_WARN_ADMIN NGINX_PORT VARNISH_PORT MEM_PORT MEM_ADMIN <<<"$(free_ports 11)"
log "starting the simulated Cloudflare API ($SIM_KEYS integrations, ${UPSTREAM_LATENCY_MS} ms)"
"$UPSTREAM_BIN" --port "$UPSTREAM_PORT" --counters-port "$COUNTERS_PORT" \
  --latency-ms "$UPSTREAM_LATENCY_MS" --keys "$SIM_KEYS" --token "$TOKEN" --account "$ACCOUNT" \
  >"$RUN/upstream.out" 2>"$RUN/upstream.err" &
UPSTREAM_PID=$!
track "$UPSTREAM_PID"
wait_ready "$RUN/upstream.out" "$UPSTREAM_PID"
read -r _ UPSTREAM_BASE COUNTERS_URL <"$RUN/upstream.out"
CONTROL_URL=${COUNTERS_URL%/counters}

# ---- 3. the systems ----
SIDECAR_FLAGS=(--upstream "$UPSTREAM_BASE"
  # The benchmark measures caching, not the budget: warming 10,000 keys would spend it.
  --upstream-budget-requests 1000000000 --upstream-budget-period 1s --upstream-budget-burst 1000000)

# The main row is the sidecar as shipped: default log level (info, one event per request) and
# format, its output appended to a file as a container runtime would keep it. Beside it the same
# binary at `--log-level warn`, to show what the access log costs. Appending (O_APPEND) lets each
# run truncate the files, so a long run does not fill the disk with request lines.
log "starting the sidecar with its defaults (access log to a file), and one at --log-level warn"
"$SIDECAR_BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin-listen "127.0.0.1:$SIDECAR_ADMIN" \
  "${SIDECAR_FLAGS[@]}" >>"$RUN/sidecar.log" 2>&1 &
SIDECAR_PID=$!
track "$SIDECAR_PID"
"$SIDECAR_BIN" --listen "127.0.0.1:$SIDECAR_WARN_PORT" --admin-listen "127.0.0.1:$SIDECAR_WARN_ADMIN" \
  --log-level warn "${SIDECAR_FLAGS[@]}" >>"$RUN/sidecar-warn.log" 2>&1 &
SIDECAR_WARN_PID=$!
track "$SIDECAR_WARN_PID"
wait_http "http://127.0.0.1:$SIDECAR_ADMIN/healthz"
wait_http "http://127.0.0.1:$SIDECAR_WARN_ADMIN/healthz"

# The ceiling answers with exactly the headers and body of a sidecar hit.
HOT_KEY=ref-0000000
curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SIDECAR_PORT$LOOKUP_PATH$HOT_KEY"
curl -s -D "$RUN/hit.headers" -o "$RUN/hit.body" -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$SIDECAR_PORT$LOOKUP_PATH$HOT_KEY"
grep -qi '^cache-status: .*hit' "$RUN/hit.headers" || { echo "run.sh: no sidecar hit" >&2; cat "$RUN/hit.headers" >&2; exit 1; }
CEILING_HEADERS=()
while IFS= read -r line; do
  line=${line%$'\r'}
  case "${line,,}" in
    http/* | "" | content-length:* | date:*) ;;
    *) CEILING_HEADERS+=(--header "$line") ;;
  esac
done <"$RUN/hit.headers"
BODY_BYTES=$(stat -c %s "$RUN/hit.body")
log "a hit is ${BODY_BYTES} body bytes; starting the ceiling and the peers measured ($SYSTEMS)"
"$CEILING_BIN" --port "$CEILING_PORT" --body-file "$RUN/hit.body" "${CEILING_HEADERS[@]}" \
  >"$RUN/ceiling.out" 2>&1 &
CEILING_PID=$!
track "$CEILING_PID"
wait_ready "$RUN/ceiling.out" "$CEILING_PID"

NGINX_PID="" VARNISH_PID=""
if wanted nginx; then
NGINX_CACHE=/dev/shm/zt-bench-nginx.${RUN##*.}
HMAC_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
sed -e "s|@RUN_DIR@|$RUN|g; s|@LISTEN_PORT@|$NGINX_PORT|g; s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
  -e "s|@CACHE_DIR@|$NGINX_CACHE|g; s|@HMAC_KEY@|$HMAC_KEY|g" \
  "$HERE/nginx.conf.template" >"$RUN/nginx.conf"
nginx -c "$RUN/nginx.conf" >"$RUN/nginx.out" 2>&1 &
NGINX_PID=$!
track "$NGINX_PID"
wait_http "http://127.0.0.1:$NGINX_PORT/"
fi

if wanted varnish; then
sed -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" "$HERE/varnish.vcl.template" >"$RUN/varnish.vcl"
chmod 644 "$RUN/varnish.vcl"
varnishd -F -a "127.0.0.1:$VARNISH_PORT" -f "$RUN/varnish.vcl" -s malloc,1g -n "$RUN/varnish" \
  -T none >"$RUN/varnish.out" 2>&1 &
VARNISH_PID=$!
track "$VARNISH_PID"
wait_http "http://127.0.0.1:$VARNISH_PORT/"
fi

port_of() {
  case $1 in
    ceiling) echo "$CEILING_PORT" ;; sidecar) echo "$SIDECAR_PORT" ;;
    sidecar-warn) echo "$SIDECAR_WARN_PORT" ;; nginx) echo "$NGINX_PORT" ;;
    varnish) echo "$VARNISH_PORT" ;;
  esac
}
pids_of() {
  case $1 in
    ceiling) echo "$CEILING_PID" ;; sidecar) echo "$SIDECAR_PID" ;;
    sidecar-warn) echo "$SIDECAR_WARN_PID" ;;
    nginx) process_tree "$NGINX_PID" ;; varnish) process_tree "$VARNISH_PID" ;;
  esac
}

warm() { # system, first index, count
  local port
  port=$(port_of "$1")
  "$DRIVER_BIN" get-range --url-prefix "http://127.0.0.1:$port$LOOKUP_PATH" --token "$TOKEN" \
    --from "$2" --count "$3" --concurrency 128 >"$RESULTS/warm-$1-$3.json"
}

# One wrk run against one system; writes results/<scenario>-<system>-r<round>.json.
measure() { # system, scenario (hot|keys), round
  local system=$1 scenario=$2 round=$3 port pids before_cpu after_cpu before_up after_up url script
  local before_busy after_busy before_cs after_cs tag=$2-$1-r$3
  port=$(port_of "$system")
  pids=$(pids_of "$system")
  if [[ $scenario == hot ]]; then
    warm "$system" 0 1
    url="http://127.0.0.1:$port$LOOKUP_PATH$HOT_KEY"
    script=(-s "$HERE/hot.lua" "$url")
  else
    warm "$system" 0 "$KEYS"
    url="http://127.0.0.1:$port$LOOKUP_PATH"
    script=(-s "$HERE/keys.lua" "$url" -- "$LOOKUP_PATH" "$KEYS")
  fi
  # Entries that expired since the last round were answered stale and are being refreshed in the
  # background (all three caches do that); let those refreshes finish before measuring hits. A
  # refresh refused because too many were pending at once (max_pending_lookups) leaves its entry
  # stale, to expire during the run: further passes start those.
  wait_upstream_quiet
  if [[ $scenario == keys ]]; then
    # Passes until one reaches the upstream no more (at most 20; 1,024 fetches in flight by default).
    local before
    for _ in $(seq 1 20); do
      before=$(upstream_reference_gets)
      warm "$system" 0 "$KEYS"
      wait_upstream_quiet
      [[ $(upstream_reference_gets) == "$before" ]] && break
    done
  fi
  # The access log of this run only (see where the sidecars are started).
  case $system in sidecar) : >"$RUN/sidecar.log" ;; sidecar-warn) : >"$RUN/sidecar-warn.log" ;; esac
  before_up=$(upstream_reference_gets)
  # shellcheck disable=SC2086
  before_cpu=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  before_cs=$(ctx_switches $pids)
  before_busy=$(cpu_busy_total)
  local TIMEFORMAT='%U %S'
  { time wrk -t2 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "${script[@]}" \
    >"$RUN/wrk-$tag.txt" 2>&1; } 2>"$RUN/wrk-time-$tag.txt"
  after_busy=$(cpu_busy_total)
  # shellcheck disable=SC2086
  after_cpu=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  after_cs=$(ctx_switches $pids)
  after_up=$(upstream_reference_gets)
  local log_lines=-1 dropped=-1
  if [[ $system == sidecar ]]; then
    log_lines=$(wc -l <"$RUN/sidecar.log")
    dropped=$(curl -s "http://127.0.0.1:$SIDECAR_ADMIN/metrics" |
      awk '/^zt_sidecar_log_lines_dropped_total / {print $2}')
  fi
  python3 - "$RUN/wrk-$tag.txt" "$RESULTS/$tag.json" "$((after_cpu - before_cpu))" "$CLK_TCK" \
    "$((after_up - before_up))" "$system" "$scenario" "$round" "$((after_busy - before_busy))" \
    "$RUN/wrk-time-$tag.txt" "$((after_cs - before_cs))" "$log_lines" "${dropped:--1}" <<'PY'
import json, os, sys
text, out, ticks, clk, upstream, system, scenario, round_, busy, wrk_time, switches, log_lines, dropped = sys.argv[1:]
line = next(l for l in open(text) if l.startswith("WRK_JSON "))
wrk = json.loads(line[len("WRK_JSON "):])
seconds = wrk["duration_us"] / 1e6
cpu = int(ticks) / int(clk)
wrk_cpu = sum(float(x) for x in open(wrk_time).read().split()[-2:])
others = max(int(busy) / int(clk) - cpu - wrk_cpu, 0.0)
requests = wrk["requests"]
result = {
    "system": system, "scenario": scenario, "round": int(round_),
    "requests": requests, "seconds": seconds,
    "rps": requests / seconds,
    "latency_us": wrk["latency_us"], "errors": wrk["errors"],
    "cpu_seconds": cpu,
    "cpu_seconds_per_100k": cpu / requests * 1e5 if requests else None,
    "context_switches_per_request": int(switches) / requests if requests else None,
    "wrk_cpu_seconds": wrk_cpu,
    "other_processes_cpu_seconds": others,
    "other_processes_cpu_share": others / ((os.cpu_count() or 1) * seconds),
    "upstream_calls_during_run": int(upstream),
    # The default sidecar only: lines in its log file after the run, and the process's count of
    # dropped lines so far (-1: not measured).
    "log_lines": int(log_lines),
    "log_lines_dropped_total": int(float(dropped)),
}
json.dump(result, open(out, "w"))
lat = wrk["latency_us"]
print(f'r{round_} {scenario:4} {system:12} {result["rps"]:7.0f} req/s  p50 {lat["p50"]/1000:6.2f}  '
      f'p99 {lat["p99"]/1000:6.2f}  p99.9 {lat["p999"]/1000:6.2f} ms  '
      f'cpu/100k {result["cpu_seconds_per_100k"] or 0:.2f} s  cs/req {result["context_switches_per_request"] or 0:.2f}  '
      f'others {100 * result["other_processes_cpu_share"]:.0f}%  upstream {upstream}  errors {sum(wrk["errors"].values())}'
      + (f'  log lines {log_lines} dropped {dropped}' if system == "sidecar" else ''),
      file=sys.stderr)
PY
}

phase() { [[ " $PHASES " == *" $1 "* ]]; }

# ---- 4. throughput and latency ----
if phase load; then
  for round in $(seq 1 "$ROUNDS"); do
    for scenario in hot keys; do
      for system in $SYSTEMS; do
        log "wrk: round $round, $scenario on $system (${DURATION}s)"
        measure "$system" "$scenario" "$round"
      done
    done
  done
fi

# ---- 5. coalescing ----
# Each system gets its own never-requested keys (seeded integrations past the KEYS range).
coalesce_index=$KEYS
phase coalesce || COALESCE_SYSTEMS=""
for system in $COALESCE_SYSTEMS; do
  for clients in "$COALESCE_CLIENTS" 100; do
    key=$(printf 'ref-%07d' "$coalesce_index")
    coalesce_index=$((coalesce_index + 1))
    port=$(port_of "$system")
    before_up=$(upstream_reference_gets)
    log "coalescing: $clients concurrent first lookups of $key on $system"
    "$DRIVER_BIN" coalesce --url "http://127.0.0.1:$port$LOOKUP_PATH$key" --token "$TOKEN" \
      --clients "$clients" >"$RUN/coalesce-$system-$clients.json"
    sleep 0.5
    after_up=$(upstream_reference_gets)
    python3 - "$RUN/coalesce-$system-$clients.json" "$RESULTS/coalesce-$system-$clients.json" \
      "$((after_up - before_up))" "$system" "$UPSTREAM_LATENCY_MS" <<'PY'
import json, sys
source, out, upstream, system, latency = sys.argv[1:]
result = json.load(open(source))
result.update(system=system, upstream_calls=int(upstream), upstream_latency_ms=int(latency))
json.dump(result, open(out, "w"))
lat = result["latency_ms"]
print(f'coalesce {system:8} clients {result["clients"]:5}: upstream calls {upstream}, '
      f'latency p50 {lat["p50"]:.1f} p99 {lat["p99"]:.1f} max {lat["max"]:.1f} ms '
      f'(send spread {result["send_spread_ms"]:.1f} ms), statuses {result["statuses"]}', file=sys.stderr)
PY
  done
done

# ---- 6. memory ----
# A fresh sidecar; the other servers are stopped so that the fill has both cores. The upstream
# answers at once (latency 0), so the fill is bound by the sidecar's miss path, not by waiting.
if phase memory; then
  log "memory: stopping the load servers, filling a fresh sidecar"
  for pid in "$SIDECAR_PID" "$SIDECAR_WARN_PID" "$CEILING_PID" $NGINX_PID $VARNISH_PID; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$SIDECAR_PID" "$SIDECAR_WARN_PID" "$CEILING_PID" $NGINX_PID $VARNISH_PID; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  curl -s -X POST "$CONTROL_URL/latency?ms=0" >/dev/null
  "$SIDECAR_BIN" --listen "127.0.0.1:$MEM_PORT" --admin-listen "127.0.0.1:$MEM_ADMIN" --log-level warn \
    --cache-max-bytes 2GiB --cache-ttl 3600s "${SIDECAR_FLAGS[@]}" >"$RUN/sidecar-mem.log" 2>&1 &
  MEM_PID=$!
  track "$MEM_PID"
  wait_http "http://127.0.0.1:$MEM_ADMIN/healthz"
  sleep 1
  IDLE_RSS=$(rss_kib "$MEM_PID")
  memory_points=("0 $IDLE_RSS 0 0")
  filled=0
  for target in 100000 "$FILL"; do
    ((target > filled)) || continue
    log "memory: filling entries $filled..$target"
    "$DRIVER_BIN" get-range --url-prefix "http://127.0.0.1:$MEM_PORT$LOOKUP_PATH" --token "$TOKEN" \
      --from "$filled" --count "$((target - filled))" --concurrency 64 >"$RESULTS/fill-$target.json"
    filled=$target
    stats=$(curl -s "http://127.0.0.1:$MEM_ADMIN/cache/stats")
    sleep 1
    memory_points+=("$target $(rss_kib "$MEM_PID") $(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["entries"], s["weighted_bytes"])' "$stats")")
  done
  python3 - "$RESULTS/memory.json" "$BODY_BYTES" "${memory_points[@]}" <<'PY'
import json, sys
out, body = sys.argv[1], int(sys.argv[2])
points = []
for point in sys.argv[3:]:
    filled, rss_kib, entries, weighted = (int(x) for x in point.split())
    points.append({"filled": filled, "entries": entries, "rss_bytes": rss_kib * 1024, "weighted_bytes": weighted})
idle = points[0]["rss_bytes"]
result = {"body_bytes": body, "idle_rss_bytes": idle, "points": points}
if len(points) >= 2:
    last = points[-1]
    result["bytes_per_entry_from_idle"] = (last["rss_bytes"] - idle) / max(last["entries"], 1)
if len(points) >= 3:
    a, b = points[-2], points[-1]
    result["bytes_per_entry_marginal"] = (b["rss_bytes"] - a["rss_bytes"]) / max(b["entries"] - a["entries"], 1)
json.dump(result, open(out, "w"))
for p in points:
    print(f'memory: {p["entries"]:8} entries  RSS {p["rss_bytes"]/2**20:8.1f} MiB  weighted {p["weighted_bytes"]/2**20:8.1f} MiB', file=sys.stderr)
PY
  kill -TERM "$MEM_PID" 2>/dev/null || true
fi

# ---- 7. report ----
python3 "$HERE/report.py" "$RESULTS" "$OUT" "$DURATION" "$KEYS" "$COALESCE_CLIENTS" "$UPSTREAM_LATENCY_MS" "$ROUNDS"
rm -rf "$OUT/raw"
cp -r "$RESULTS" "$OUT/raw"
log "done: $OUT/load.json, $OUT/load.md (raw figures in $OUT/raw, logs in $RUN)"
