"""``make bench``: every benchmark, each beside a baseline measured in the same run.

    .venv/bin/python -m bench [latency throughput state_reports scale fanout fleet flapping schedules cluster]
                              [--quick] [--profile]

Without names: latency, throughput, state_reports, scale, fanout, fleet and flapping (``cluster``,
one node against two, starts a ZooKeeper and runs only when named). Results
are merged into bench/results.json and the table in
docs/benchmarks.md is rewritten from it. ``--profile`` adds a py-spy pass of the server
worker under the latency, throughput and state-report loads (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import traceback

from .common import HERE, ROOT, UTC, Context, Profile, describe_machine, machine

RESULTS = HERE / "results.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEFAULT = ["latency", "throughput", "state_reports", "scale", "fanout", "fleet", "flapping"]
CHOICES = DEFAULT + ["schedules", "cluster"]


def run_module(name: str, ctx: Context) -> dict:
    if name in ("fanout", "schedules", "flapping"):
        return run_foreign(name, ctx)
    # Imported late so one benchmark's import cost or failure does not touch the others.
    module = __import__(f"bench.bench_{name}", fromlist=["run", "report"])
    result = module.run(ctx)
    module.report(result)
    return result


def run_foreign(name: str, ctx: Context) -> dict:
    """Benchmarks written as their own programs (bench_fanout patches gevent at import, which
    must not happen in this process): run in a child, read the JSON file they write."""
    args = {"fanout": ["--clients", "200", "--rounds", "5"] if ctx.quick else [],
            "schedules": ["--size", "20000", "--measured", "5"] if ctx.quick else [],
            "flapping": ["--clients", "50", "--seconds", "2"] if ctx.quick else []}[name]
    out_file = HERE / f"results_{name}.json"
    before = out_file.stat().st_mtime if out_file.exists() else 0.0
    print(f"\n{name}: running python -m bench.bench_{name} {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", f"bench.bench_{name}", *args], cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_{name} exited with {proc.returncode}")
    if not out_file.exists() or out_file.stat().st_mtime <= before:
        raise RuntimeError(f"bench_{name} did not write {out_file.name}")
    return json.loads(out_file.read_text())


def merge_results(run: dict) -> dict:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.setdefault("benchmarks", {})
    data["machine"] = run["machine"]
    data["updated"] = run["when"]
    for name, result in run["benchmarks"].items():
        data["benchmarks"][name] = {"when": run["when"], "quick": run["quick"], **result}
    RESULTS.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data


def _v(value, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def summary_rows(benchmarks: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(measure, PumpLink, baseline from the same run, ratio, target, verdict) per figure."""
    rows = []
    lat = benchmarks.get("latency")
    if lat and "activation_to_pump" in lat:
        a, me, mq = lat["activation_to_pump"], lat["get_me"], lat["mqtt_publish_receive"]
        rows.append(("Command latency: POST /activate until the pump holds ON, p50 (p99)",
                     f"{a['p50_ms']} ms ({a['p99_ms']})",
                     f"GET /me {me['p50_ms']} ms ({me['p99_ms']}) + MQTT {mq['p50_ms']} ms ({mq['p99_ms']})",
                     f"{lat['ratio_p50_to_baseline_sum']}", "p50 <= 2 x (me + MQTT)", _pass(lat.get("pass"))))
    thr = benchmarks.get("throughput")
    if thr and "activations_accepted_per_s" in thr:
        for ph in thr.get("phases", {}).values():
            main_phase = ph["concurrency"] == thr["concurrency"]
            errors = {k: v for k, v in ph["activation_statuses"].items() if k != "202"}
            rows.append((f"Throughput: activations accepted/s, {ph['concurrency']} clients, {thr['devices']} pumps"
                         + (f" (errors: {errors})" if errors else ""),
                         f"{ph['activations_accepted_per_s']}/s", f"GET /health {ph['health_per_s']}/s",
                         f"{ph['ratio']}", ">= 0.3" if main_phase else "-",
                         _pass(thr.get("pass")) if main_phase else "-"))
    rep = benchmarks.get("state_reports")
    if rep and "server" in rep:
        rows.append((f"State reports ingested/s (row + broadcast), {rep['devices']} devices",
                     f"{rep['server']['per_s']}/s", f"raw paho receive {rep['raw_paho']['per_s']}/s",
                     f"{rep['ratio']}", "-", "-"))
    fan = benchmarks.get("fanout")
    if fan and "pumplink" in fan:
        p, b = fan["pumplink"], fan["bare"]
        rows.append((f"Fan-out: one state change to {fan['clients']} JSON WebSocket clients, last client",
                     f"{p['last_ms']} ms", f"bare gevent-websocket loop {b['last_ms']} ms",
                     f"{fan['ratio']['last_ms']}", "-", "-"))
    fl = benchmarks.get("fleet")
    if fl and "retained_received" in fl:
        rows.append((f"Fleet restart: {fl['devices']} pumps online with retained state, then start-up: retained "
                     "messages received (dropped), every state known after /health",
                     f"{fl['retained_received']} of {fl['retained_sent']} ({fl['dropped']} dropped), "
                     f"known in {_v(fl['known_s_from_health'], ' s')} (from spawn {_v(fl['known_s_from_spawn'], ' s')})",
                     f"one wildcard subscribe: {fl['baseline_wildcard_received']} of {fl['retained_sent']}", "-",
                     "all, within 10 s", _pass(fl.get("pass"))))
        li = fl.get("list")
        if li:
            rows.append((f"GET /devices?limit=50 (first page), {fl['devices']} devices, p50 (max)",
                         f"{li['p50_ms']} ms ({li['max_ms']})", f"whole list {li['whole_s']} s", "-", "<= 50 ms",
                         _pass(li.get("pass"))))
    fp = benchmarks.get("flapping")
    if fp and "flapping" in fp:
        f, c = fp["flapping"], fp["calm"]
        rows.append((f"One pump flapping at {fp['flap_rate_per_s']}/s: another pump's {fp['changes']} changes to "
                     f"{fp['clients']} JSON clients, p50 / p99 (missed); /health max",
                     f"{f['p50_ms']} / {f['p99_ms']} ms ({f['missed']}); {fp['health_flapping_ms']['max']} ms",
                     f"no flapping: {c['p50_ms']} / {c['p99_ms']} ms ({c['missed']}); {fp['health_calm_ms']['max']} ms",
                     f"{fp.get('ratio_p99')}", "p99 <= 100 ms, none missed, /health < 100 ms", _pass(fp.get("pass"))))
    cl = benchmarks.get("cluster")
    if cl and "ratio_two_over_one" in cl:
        one, two, r = cl["one"], cl["two"], cl["ratio_two_over_one"]
        rows.append((f"Two nodes on this machine: activations accepted/s, {cl['concurrency']} clients, "
                     f"{cl['devices']} pumps, mixed (about half forwarded) / owner only",
                     f"{two['mixed']['per_s']}/s / {two['owner_only']['per_s']}/s",
                     f"one node {one['activations']['per_s']}/s",
                     f"{r['activations_mixed']} / {r['activations_owner_only']}", "-", "-"))
        rows.append((f"Two nodes: state reports ingested/s, {cl['report_devices']} devices",
                     f"{two['state_reports']['per_s']}/s", f"one node {one['state_reports']['per_s']}/s",
                     f"{r['state_reports']}", "-", "-"))
        t = two["takeover"]
        rows.append((f"Two nodes: all partitions owned again after SIGKILL (session {t['session_timeout_s']} s) "
                     "/ SIGTERM",
                     f"{t['sigkill_s']} s / {t['sigterm_s']} s", "-", "-", "-", "-"))
    sc = benchmarks.get("scale")
    if sc and "full" in sc:
        f, base = sc["full"], sc["base"]
        rows.append((f"Scale: start-up until quiet, {f['devices']} devices + {f['pending_schedules']} schedules",
                     f"{f['startup_quiet_s']} s (/health {f['startup_health_s']} s)",
                     f"1 device {base['startup_quiet_s']} s", f"{sc['startup_ratio_full_over_base']}", "-", "-"))
        rows.append(("Scale: device actors that died during start-up",
                     f"{f['actors_died_at_startup']} of {f['devices']} (devices only: "
                     f"{sc['devices_only']['actors_died_at_startup']})",
                     f"1 device {base['actors_died_at_startup']}", "-", "0", _pass(sc.get("actors_pass"))))
        rows.append(("Scale: resident memory per device (worker RSS delta, every actor alive)",
                     f"{sc['rss_per_device_kb']} KB", f"1-device worker {base['worker_rss_mb']} MB", "-", "-", "-"))
        rows.append(("Scale: idle CPU of the worker over 5 s (% of one core)", f"{f['idle_cpu_percent']} %",
                     f"1 device {base['idle_cpu_percent']} %", f"+{sc.get('idle_extra_percent')} points",
                     "~0: devices add <= 1 point", _pass(sc.get("idle_pass"))))
        rows.append(("Scale: schedule lateness at the pump, median (max)",
                     f"{_v(f['lateness_median_ms'], ' ms')} ({_v(f['lateness_max_ms'], ' ms')})",
                     f"1 device {base['lateness_median_ms']} ms ({base['lateness_max_ms']} ms)",
                     f"{_v(sc['lateness_median_ratio'])}", "-", "-"))
        la = f.get("list_all_devices")
        if la:
            rows.append((f"Scale: GET /devices with {f['devices']} devices", f"HTTP {la['status']} in {la['seconds']} s",
                         "-", "-", "200", _pass(la["status"] == 200)))
    return rows


def _pass(ok) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def markdown_table(data: dict) -> str:
    rows = summary_rows(data.get("benchmarks", {}))
    lines = [f"Measured {data.get('updated', '?')} on: {describe_machine(data['machine'])}.", "",
             "| measure | PumpLink | baseline (same run) | ratio | target | verdict |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    quick = [n for n, r in data.get("benchmarks", {}).items() if r.get("quick")]
    if quick:
        lines += ["", f"(`--quick` sizes for: {', '.join(quick)})"]
    return "\n".join(lines)


def write_docs(data: dict) -> None:
    table = f"{BEGIN}\n{markdown_table(data)}\n{END}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    DOCS.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, of {', '.join(CHOICES)} (default: {' '.join(DEFAULT)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker under load (needs py-spy)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in CHOICES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(CHOICES)}")
    names = args.names or [n for n in DEFAULT if n != "fanout" or (HERE / "bench_fanout.py").exists()]
    if args.profile and not Profile.available():
        print("--profile: py-spy is not installed (.venv/bin/pip install py-spy); profiling skipped")
    ctx = Context.make(quick=args.quick, profile=args.profile)
    info = machine()
    print(f"Machine: {describe_machine(info)}")
    print(f"Benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}; logs in {ctx.log_dir}", flush=True)
    run = {"when": dt.datetime.now(UTC).isoformat(timespec="seconds"), "machine": info, "quick": args.quick,
           "benchmarks": {}}
    failed = []
    began = time.monotonic()
    for name in names:
        t = time.monotonic()
        try:
            result = run_module(name, ctx)
            result["took_s"] = round(time.monotonic() - t, 1)
            run["benchmarks"][name] = result
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            print(f"\n{name}: FAILED to run: {exc}", flush=True)
            failed.append(name)
    data = merge_results(run)
    if not args.no_docs:
        write_docs(data)
    print(f"\nSummary ({time.monotonic() - began:.0f} s; machine: {describe_machine(info)})\n")
    print(markdown_table({**data, "benchmarks": {k: v for k, v in data["benchmarks"].items()
                                                  if k in run["benchmarks"]}}))
    print(f"\nresults in {RESULTS}" + ("" if args.no_docs else f"; table in {DOCS}"))
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
