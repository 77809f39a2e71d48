"""Assembles the load benchmark's figures (results/*.json written by run.sh) into
target/bench-results/load.json and load.md, and prints PASS/FAIL for each target.

Usage (run.sh calls it): report.py RESULTS_DIR OUT_DIR DURATION KEYS COALESCE_CLIENTS LATENCY_MS ROUNDS
"""

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

SYSTEM_ORDER = ["ceiling", "sidecar", "sidecar-warn", "nginx", "varnish"]
SYSTEM_NAMES = {
    "ceiling": "static ceiling (hyper, same server loop)",
    "sidecar": "zt-risk-sidecar (defaults: access log at info → file)",
    "sidecar-warn": "zt-risk-sidecar (--log-level warn)",
    "nginx": "nginx proxy_cache",
    "varnish": "Varnish",
}
SCENARIOS = {"hot": "one hot key", "keys": "{keys} keys, uniformly at random"}


def load(directory, name):
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else None


def machine():
    model = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    def first_line(*args):
        try:
            done = subprocess.run(args, capture_output=True, text=True, check=False)
        except OSError:
            return ""
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else ""
    status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "load_average_at_report": os.getloadavg(),
        # BENCH_COMMIT names the code when the tree is not a git checkout (a snapshot).
        "commit": os.environ.get("BENCH_COMMIT") or (commit.stdout.strip() if commit.returncode == 0 else "unknown"),
        "uncommitted_files": len([l for l in status.stdout.splitlines() if l]) if status.returncode == 0 else None,
        "nginx": first_line("nginx", "-v"),
        "varnish": first_line("varnishd", "-V"),
        "wrk": first_line("wrk", "-v"),
        "rustc": first_line("rustc", "--version"),
    }


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


QUIET_SHARE = 0.10


def aggregate(rounds):
    """One system and scenario over its rounds. The machine is shared and other processes only
    ever slow a run down, so the figures compared are medians over the quiet rounds (other
    processes took under 10% of the machine's CPU); with no quiet round, the quietest one, flagged.
    Every round is kept in the JSON."""
    quiet = [r for r in rounds if r.get("other_processes_cpu_share", 0.0) < QUIET_SHARE]
    noisy = not quiet
    if noisy:
        quiet = [min(rounds, key=lambda r: r.get("other_processes_cpu_share", 0.0))]
    return {
        "rounds": rounds,
        "rounds_used": [r["round"] for r in quiet],
        "noisy": noisy,
        "rps": median(r["rps"] for r in quiet),
        "latency_us": {p: median(r["latency_us"][p] for r in quiet) for p in ("p50", "p90", "p99", "p999", "max")},
        "cpu_seconds_per_100k": median(r["cpu_seconds_per_100k"] for r in quiet),
        "context_switches_per_request": median(r.get("context_switches_per_request") for r in quiet),
        "other_processes_cpu_share": median(r.get("other_processes_cpu_share", 0.0) for r in quiet),
        "rps_range": (min(r["rps"] for r in rounds), max(r["rps"] for r in rounds)),
        "upstream_calls_during_run": sum(r["upstream_calls_during_run"] for r in rounds),
        "errors": sum(sum(r["errors"].values()) for r in rounds),
    }


def ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def main():
    results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    duration, keys, clients, latency_ms, rounds_wanted = (int(x) for x in sys.argv[3:8])
    report = {"machine": machine(), "settings": {
        "wrk": f"wrk -t2 -c64 -d{duration}s --latency, keep-alive, Authorization header", "rounds": rounds_wanted,
        "keys": keys, "coalesce_clients": clients, "upstream_latency_ms": latency_ms},
        "load": {}, "coalescing": [], "memory": None, "targets": []}
    md = []
    m = report["machine"]
    dirty = "" if m["uncommitted_files"] is None else f" ({m['uncommitted_files']} uncommitted files)"
    md.append(f"Run {m['date']} on {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
              f"kernel {m['kernel']}, commit {m['commit']}{dirty}; "
              f"{m['nginx']}, {m['varnish']}, {m['wrk']}. Load average at the end: "
              f"{', '.join(f'{x:.2f}' for x in m['load_average_at_report'])}.")
    md.append("")

    for scenario, title in SCENARIOS.items():
        rows = {}
        for system in SYSTEM_ORDER:
            rounds = [json.loads(path.read_text())
                      for path in sorted(results.glob(f"{scenario}-{system}-r*.json"))]
            if rounds:
                rows[system] = aggregate(rounds)
        if not rows:
            continue
        ceiling, nginx = rows.get("ceiling"), rows.get("nginx")
        for system, row in rows.items():
            lat = row["latency_us"]
            for reference_name, reference in (("ceiling", ceiling), ("nginx", nginx)):
                if reference:
                    ref_lat = reference["latency_us"]
                    row[f"rps_vs_{reference_name}"] = ratio(row["rps"], reference["rps"])
                    for p in ("p50", "p99", "p999"):
                        row[f"{p}_vs_{reference_name}"] = ratio(lat[p], ref_lat[p])
                    row[f"cpu_vs_{reference_name}"] = ratio(row["cpu_seconds_per_100k"], reference["cpu_seconds_per_100k"])
        report["load"][scenario] = rows
        md.append(f"### Hits: {title.format(keys=keys)} (median of the quiet rounds among {rounds_wanted} of "
                  f"{duration} s; wrk: 2 threads, 64 connections)")
        md.append("")
        md.append("| System | req/s | ×ceiling | ×nginx | p50 ms | ×ceil | ×nginx | p99 ms | ×ceil | ×nginx "
                  "| p99.9 ms | ×ceil | ×nginx | CPU s /100k | ×ceil | ×nginx | ctx sw /req | others' CPU "
                  "| rounds used | req/s range (all rounds) | upstream calls | errors |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for system, row in rows.items():
            lat = row["latency_us"]
            low, high = row["rps_range"]
            cells = [SYSTEM_NAMES.get(system, system), f"{row['rps']:,.0f}",
                     fmt(row.get("rps_vs_ceiling")), fmt(row.get("rps_vs_nginx"))]
            for p in ("p50", "p99", "p999"):
                cells += [f"{lat[p] / 1000:.2f}", fmt(row.get(f"{p}_vs_ceiling")), fmt(row.get(f"{p}_vs_nginx"))]
            cells += [fmt(row["cpu_seconds_per_100k"]), fmt(row.get("cpu_vs_ceiling")), fmt(row.get("cpu_vs_nginx")),
                      fmt(row["context_switches_per_request"]), f"{100 * row['other_processes_cpu_share']:.0f}%",
                      ",".join(str(n) for n in row["rounds_used"]) + (" (noisy)" if row["noisy"] else ""),
                      f"{low / 1000:.0f}k–{high / 1000:.0f}k",
                      str(row["upstream_calls_during_run"]), str(row["errors"])]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")

    coalescing = []
    for system in ("sidecar", "nginx", "varnish"):
        for count in (clients, 100):
            row = load(results, f"coalesce-{system}-{count}.json")
            if row and row not in coalescing:
                coalescing.append(row)
    report["coalescing"] = coalescing
    if coalescing:
        md.append(f"### Coalescing: N connections send the same first lookup at once (upstream answers in {latency_ms} ms)")
        md.append("")
        md.append("| System | waiters | upstream calls | min ms | p50 ms | p99 ms | max ms | send spread ms | answers |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in coalescing:
            lat = row["latency_ms"]
            answers = ", ".join(f"{k}×{v}" for k, v in row["outcomes"].items()) or json.dumps(row["statuses"])
            if row["errors"]:
                answers += f"; errors {row['errors']}"
            md.append(f"| {SYSTEM_NAMES.get(row['system'], row['system'])} | {row['clients']} | {row['upstream_calls']} "
                      f"| {lat['min']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
                      f"| {row['send_spread_ms']:.1f} | {answers} |")
        md.append("")

    memory = load(results, "memory.json")
    report["memory"] = memory
    if memory:
        md.append(f"### Memory of the sidecar (VmRSS; body {memory['body_bytes']} bytes per entry)")
        md.append("")
        md.append("| cached entries | VmRSS MiB | weighted bytes (cache bound) MiB | RSS bytes per entry since idle |")
        md.append("|---:|---:|---:|---:|")
        idle = memory["idle_rss_bytes"]
        for point in memory["points"]:
            per = (point["rss_bytes"] - idle) / point["entries"] if point["entries"] else None
            md.append(f"| {point['entries']:,} | {point['rss_bytes'] / 2**20:.1f} | {point['weighted_bytes'] / 2**20:.1f} | {fmt(per, 0)} |")
        md.append("")
        if "bytes_per_entry_marginal" in memory:
            md.append(f"Marginal cost between the last two points: {memory['bytes_per_entry_marginal']:.0f} bytes per "
                      f"entry, {memory['bytes_per_entry_marginal'] - memory['body_bytes']:.0f} beyond the body.")
            md.append("")

    # ---- targets ----
    targets = []
    def target(name, passed, measured):
        targets.append({"target": name, "pass": bool(passed) if passed is not None else None, "measured": measured})
    for scenario in ("hot", "keys"):
        rows = report["load"].get(scenario, {})
        sidecar, ceiling, nginx = rows.get("sidecar"), rows.get("ceiling"), rows.get("nginx")
        label = SCENARIOS[scenario].format(keys=keys)
        if sidecar and ceiling:
            r = sidecar["rps"] / ceiling["rps"]
            target(f"sidecar hit throughput ≥ 0.9× ceiling ({label})", r >= 0.9,
                   f"{sidecar['rps']:,.0f} vs {ceiling['rps']:,.0f} req/s = {r:.2f}×")
        warn = rows.get("sidecar-warn")
        if sidecar and warn:
            r = sidecar["rps"] / warn["rps"]
            target(f"defaults ≥ 0.9× --log-level warn in hits/s ({label})", r >= 0.9,
                   f"{sidecar['rps']:,.0f} vs {warn['rps']:,.0f} req/s = {r:.2f}×")
            c = sidecar["cpu_seconds_per_100k"] / warn["cpu_seconds_per_100k"]
            target(f"defaults ≤ 1.1× --log-level warn in CPU per hit ({label})", c <= 1.1,
                   f"{sidecar['cpu_seconds_per_100k']:.2f} vs {warn['cpu_seconds_per_100k']:.2f} CPU s/100k = {c:.2f}×")
        if sidecar and nginx:
            a, b = sidecar["latency_us"]["p99"], nginx["latency_us"]["p99"]
            target(f"sidecar p99 ≤ nginx p99 ({label})", a <= b, f"{a / 1000:.2f} ms vs {b / 1000:.2f} ms")
    main_row = next((r for r in coalescing if r["system"] == "sidecar" and r["clients"] == clients), None)
    if main_row:
        limit = latency_ms + 10
        target(f"coalescing: exactly 1 upstream call for {clients} concurrent first lookups",
               main_row["upstream_calls"] == 1 and main_row["answered"] == clients,
               f"{main_row['upstream_calls']} upstream call(s), {main_row['answered']}/{clients} answered")
        target(f"coalescing: every waiter answered within {latency_ms} + 10 ms ({clients} waiters)",
               main_row["answered"] == clients and main_row["latency_ms"]["max"] <= limit,
               f"max {main_row['latency_ms']['max']:.1f} ms, p99 {main_row['latency_ms']['p99']:.1f} ms")
    if memory and "bytes_per_entry_marginal" in memory:
        overhead = memory["bytes_per_entry_marginal"] - memory["body_bytes"]
        target("≤ 1 KiB per cached entry beyond its body", overhead <= 1024,
               f"{overhead:.0f} bytes beyond a {memory['body_bytes']}-byte body "
               f"({memory['bytes_per_entry_marginal']:.0f} per entry)")
    if memory:
        target("idle RSS < 20 MiB", memory["idle_rss_bytes"] < 20 * 2**20,
               f"{memory['idle_rss_bytes'] / 2**20:.1f} MiB")
    report["targets"] = targets
    md.append("### Targets")
    md.append("")
    md.append("| Target | Measured | Result |")
    md.append("|---|---|---|")
    for t in targets:
        md.append(f"| {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'FAIL'} |")
    md.append("")

    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "load.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'FAIL'}: {t['target']}: {t['measured']}")


if __name__ == "__main__":
    main()
