"""`make bench` / `python -m bench`: every system on one embedded server, one table.

Starts one private PostgreSQL, runs each system's figures against it one system after the
other (every run in a fresh database), then the head-to-head rounds (pgtasks and PgQueuer
drains alternating, the order flipped every round), then pgtasks' ``maxconn_*`` run on a
second server started with ``max_connections = 100``. Prints one side-by-side table with the
targets below it and writes the same figures, with the config, the server settings, the
commit and the machine load, to ``bench/results/<timestamp>.json`` and ``latest.json``.

    python -m bench [--systems pgtasks,pgqueuer,procrastinate] [--scale F] [--runs N]
                    [--dsn URL] [--out DIR] [--skip-maxconn] [--skip-head-to-head]

A smoke run: ``BENCH_SCALE=0.02 BENCH_RUNS=1 make bench`` (every size can be set as
``BENCH_<FIELD>``, see ``harness.BenchConfig``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.harness import (
    RATIO,
    RESULTS_DIR,
    BenchConfig,
    Figure,
    alternate,
    benchmark_server,
    format_table,
    log,
    machine_load,
    provenance,
    sample_drain,
    server_settings,
)

#: Systems in run order, with the module that drives each.
DRIVERS = {
    "pgtasks": "bench.peer_pgtasks",
    "pgqueuer": "bench.peer_pgqueuer",
    "procrastinate": "bench.peer_procrastinate",
}
BASELINE = "pgqueuer"
Results = Mapping[str, Mapping[str, Figure]]


def ratio(a: Figure | None, b: Figure | None) -> float | None:
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


def baseline_ratios(results: Results) -> dict[str, float]:
    """pgtasks / PgQueuer per shared figure (for latencies and CPU, below 1 is better)."""
    ours, theirs = results.get("pgtasks", {}), results.get(BASELINE, {})
    pairs = {key: ratio(ours.get(key), theirs.get(key)) for key in ours}
    return {key: r for key, r in pairs.items() if r is not None}


# --------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Goal:
    """One target, what this run measured for it, and over what it was judged."""

    name: str
    target: str
    value: float | None
    met: bool | None
    judged: str

    def line(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        shown = "-" if self.value is None else f"{self.value:.2f}"
        return f"  {self.name:<48} {shown:>6}   target {self.target:<9} {verdict:<13} {self.judged}"


def _samples(fig: Figure | None) -> tuple[float, ...]:
    return () if fig is None else fig.samples


def goals(results: Results) -> list[Goal]:
    """The targets pgtasks is held to. Reported, never asserted: the numbers are noisy.

    Drain ratios are judged on the median head-to-head round (the two suites' medians,
    measured minutes apart, shown next to it); the two paired figures on the median pair,
    with the worst pair shown; connections and refused connections on the worst run;
    everything else on medians.
    """
    ours, theirs = results.get("pgtasks", {}), results.get(BASELINE, {})
    found: list[Goal] = []

    def add(
        name: str, target: str, value: float | None, ok: Callable[[float], bool], judged: str
    ) -> None:
        found.append(Goal(name, target, value, None if value is None else ok(value), judged))

    for key, label, least in (
        ("drain_default", "drain_default / PgQueuer defaults", 2.0),
        ("drain_1_c10", "drain_1_c10 / PgQueuer batch 10", 1.5),
        ("drain_2_c10", "drain_2_c10 / PgQueuer batch 10", 1.5),
        ("drain_1", "drain_1 (c100) / PgQueuer", 3.0),
        ("drain_2", "drain_2 (c100) / PgQueuer", 3.0),
    ):
        suites = ratio(ours.get(key), theirs.get(key))
        shown = "-" if suites is None else f"{suites:.2f}"
        if rounds := ours.get(f"h2h_{key}"):
            judged = f"rounds [{min(rounds.samples):.2f}-{max(rounds.samples):.2f}], suites {shown}"
            add(label, f">= {least}", rounds.median, lambda v, m=least: v >= m, judged)
        else:
            add(label, f">= {least}", suites, lambda v, m=least: v >= m, "medians")
    conns = _samples(ours.get("connections_per_worker"))
    add(
        "connections_per_worker (c200, steps)",
        "<= 5",
        max(conns, default=None),
        lambda v: v <= 5,
        "most, any run",
    )
    pairs = sorted(
        on / off
        for on, off in zip(
            _samples(ours.get("enqueue_single_paired")),
            _samples(ours.get("enqueue_single_no_wakeup")),
            strict=False,
        )
        if off
    )
    add(
        "wake-ups on / off (enqueue_single pairs)",
        ">= 0.85",
        statistics.median(pairs) if pairs else None,
        lambda v: v >= 0.85,
        f"median pair (lowest {pairs[0]:.2f})" if pairs else "median pair",
    )
    add(
        "drain_max_running / drain_1 (limit not reached)",
        ">= 0.8",
        ratio(ours.get("drain_max_running"), ours.get("drain_1")),
        lambda v: v >= 0.8,
        "medians",
    )
    drops = sorted(
        (1 - h / f) * 100
        for h, f in zip(
            _samples(ours.get("drain_1_history")),
            _samples(ours.get("drain_1_history_fresh")),
            strict=False,
        )
        if f
    )
    add(
        "drain_1_history drop (%)",
        "< 15 %",
        statistics.median(drops) if drops else None,
        lambda v: v < 15,
        f"median pair (largest {drops[-1]:.1f})" if drops else "median pair",
    )
    for key, label, target, ok in (
        ("latency_p50_ms", "latency p50 (ms), LISTEN", "<= 2 ms", lambda v: v <= 2),
        ("latency_p99_ms", "latency p99 (ms), LISTEN", "<= 5 ms", lambda v: v <= 5),
        ("wf_chord_ratio", "chord children / plain drain", ">= 0.7", lambda v: v >= 0.7),
        ("wf_chord_callback_delay_ms", "chord callback start (ms)", "<= 50 ms", lambda v: v <= 50),
        ("wf_chain_handoff_p50_ms", "chain hand-off p50 (ms)", "<= 5 ms", lambda v: v <= 5),
    ):
        fig = ours.get(key)
        add(label, target, fig.median if fig else None, ok, "median")
    refused = _samples(ours.get("maxconn_connection_errors"))
    add(
        "maxconn_connection_errors",
        "0",
        max(refused, default=None),
        lambda v: v == 0,
        "most, any run",
    )
    return found


def format_report(results: Results, cfg: BenchConfig, settings: Mapping[str, Any]) -> str:
    ratios = baseline_ratios(results)
    extra = {}
    if "pgtasks" in results and BASELINE in results:
        extra = {"pgtasks / pgqueuer": {k: f"{v:.2f}x" for k, v in ratios.items()}}
    lines = [
        f"Each cell: median [min-max] of {cfg.runs} runs ({cfg.maxconn_runs} for maxconn_*). "
        "jobs/s: higher is better; ms, us and connections: lower is better.",
        "",
        format_table(results, extra),
    ]
    if "pgtasks" in results:
        lines += ["", "Targets:", *(g.line() for g in goals(results))]
    lines += ["", "Settings:"]
    lines += [f"  {name}: {json.dumps(s, default=str)}" for name, s in settings.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


async def run_all(
    dsn: str, cfg: BenchConfig, systems: list[str]
) -> tuple[dict[str, dict[str, Figure]], dict[str, Any], dict[str, str]]:
    results: dict[str, dict[str, Figure]] = {}
    meta: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for system in systems:
        driver = importlib.import_module(DRIVERS[system])
        load_before = machine_load()
        started = time.perf_counter()
        log(
            f"=== {system}: load {load_before['loadavg_1_5_15']}, "
            f"{load_before['pytest_processes']} pytest processes running"
        )
        try:
            results[system] = await driver.run(dsn, cfg, log)
        except Exception:
            errors[system] = traceback.format_exc()
            log(f"=== {system} FAILED:\n{errors[system]}")
        meta[system] = {
            "settings": driver.settings(),
            "seconds": round(time.perf_counter() - started, 1),
            "load_before": load_before,
            "load_after": machine_load(),
        }
        log(f"=== {system}: {meta[system]['seconds']:.0f}s")
    return results, meta, errors


async def head_to_head(dsn: str, cfg: BenchConfig) -> dict[str, Figure]:
    """``h2h_<key>``: pgtasks / PgQueuer per round, ``runs`` rounds.

    A round drains each pgtasks drain of ``drain_variants()`` and PgQueuer's match (batch 10,
    or ``run()`` with no argument for ``drain_default``) back to back, all of them in one
    order, reversed the next round. The suites' medians, minutes apart, would carry the
    machine's drift into the ratio.
    """
    from bench import peer_pgqueuer, peer_pgtasks

    keys, sides = [], []
    for key, (ours, processes) in peer_pgtasks.drain_variants().items():
        theirs = peer_pgqueuer.make_peer(default=key == "drain_default")
        keys.append(key)
        for peer in (ours, theirs):
            sides.append(lambda p=peer, n=processes: sample_drain(p, dsn, cfg, n))
    ratios: dict[str, list[float]] = {key: [] for key in keys}
    async for i, samples in alternate(cfg.runs, *sides):
        for key, a, b in zip(keys, samples[::2], samples[1::2], strict=True):
            assert a.rate is not None and b.rate is not None
            ratios[key].append(a.rate / b.rate)
            log(
                f"[head-to-head] round {i + 1} {key}: pgtasks {a.rate:,.0f}, "
                f"PgQueuer {b.rate:,.0f} jobs/s ({ratios[key][-1]:.2f}x)"
            )
    return {f"h2h_{key}": Figure.of(values, RATIO) for key, values in ratios.items()}


def write_results(payload: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    paths = [out_dir / f"{stamp}.json", out_dir / "latest.json"]
    for path in paths:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--systems",
        default=",".join(DRIVERS),
        help=f"comma-separated subset of {','.join(DRIVERS)} (default: all)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", 1)),
        help="multiply every job count (default 1, or BENCH_SCALE)",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, or BENCH_RUNS)")
    parser.add_argument(
        "--skip-maxconn",
        action="store_true",
        help="leave out maxconn_* (pgtasks on a second server)",
    )
    parser.add_argument(
        "--skip-head-to-head", action="store_true", help="leave out the h2h_* rounds"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_DSN"),
        help="an existing server instead of the embedded one (CREATE DATABASE)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or not set(args.systems) <= DRIVERS.keys():
        parser.error(f"choose systems from {', '.join(DRIVERS)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cfg = BenchConfig.from_env()
    if args.scale != 1:
        cfg = cfg.scaled(args.scale)
    if args.runs is not None:
        cfg = dataclasses.replace(cfg, runs=args.runs)
    for system in args.systems:  # fail before starting a server, not after pgtasks ran
        try:
            importlib.import_module(DRIVERS[system])
        except ImportError as exc:
            raise SystemExit(
                f"cannot load the {system} driver ({exc}); install the bench "
                "extra: pip install -e '.[bench]' (make bench does it)"
            ) from exc

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    h2h: dict[str, Any] = {}
    with benchmark_server(args.dsn) as dsn:
        pg = asyncio.run(server_settings(dsn))
        log(f"server: PostgreSQL {pg['server_version']} at {dsn}")
        results, meta, errors = asyncio.run(run_all(dsn, cfg, args.systems))
        if {"pgtasks", BASELINE} <= results.keys() and not args.skip_head_to_head:
            log("=== head-to-head: pgtasks and PgQueuer drains in alternating rounds")
            t0 = time.perf_counter()
            try:
                results["pgtasks"].update(asyncio.run(head_to_head(dsn, cfg)))
            except Exception:
                errors["head_to_head"] = traceback.format_exc()
                log(f"=== head-to-head FAILED:\n{errors['head_to_head']}")
            h2h = {"seconds": round(time.perf_counter() - t0, 1)}
    if "pgtasks" in results and not args.skip_maxconn:
        from bench import peer_pgtasks

        log(f"=== pgtasks maxconn: a server with max_connections = {cfg.maxconn_limit}")
        t0, load_before = time.perf_counter(), machine_load()
        try:
            with benchmark_server(max_connections=cfg.maxconn_limit) as maxconn_dsn:
                figures = asyncio.run(peer_pgtasks.run_maxconn(maxconn_dsn, cfg, log))
            results["pgtasks"].update(figures)
        except Exception:
            errors["pgtasks maxconn"] = traceback.format_exc()
            log(f"=== pgtasks maxconn FAILED:\n{errors['pgtasks maxconn']}")
        meta["pgtasks"]["maxconn"] = {
            "max_connections": cfg.maxconn_limit,
            "workers": cfg.maxconn_workers,
            "concurrency": cfg.maxconn_concurrency,
            "jobs": cfg.maxconn_jobs,
            "seconds": round(time.perf_counter() - t0, 1),
            "load_before": load_before,
            "load_after": machine_load(),
        }

    print(format_report(results, cfg, {name: m["settings"] for name, m in meta.items()}))
    payload = {
        "timestamp": stamp,
        "command": " ".join(["python -m bench", *argv]),
        "seconds": round(time.perf_counter() - started, 1),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "code": provenance(),
        "server": {"embedded": args.dsn is None, **pg},
        "config": dataclasses.asdict(cfg),
        "systems": meta,
        "head_to_head": h2h,
        "results": {s: {k: f.as_dict() for k, f in r.items()} for s, r in results.items()},
        "pgtasks_vs_pgqueuer": baseline_ratios(results),
        "goals": [dataclasses.asdict(g) for g in goals(results)] if "pgtasks" in results else [],
        "errors": errors,
    }
    paths = write_results(payload, args.out, stamp)
    log(f"wrote {', '.join(str(p) for p in paths)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
