"""`make bench` / `python -m bench`: every system, one embedded server, one table.

Starts ONE private PostgreSQL (the same embedded server pgtasks uses by default, in a temporary
folder, with the same settings for every system), runs the whole suite of each system against
it one after another (each run in its own fresh database), prints one side-by-side table and
writes the same figures as JSON to ``bench/results/<timestamp>.json`` and
``bench/results/latest.json``. After the suites, unless ``--skip-head-to-head``, the
``h2h_*`` rounds (bench/head_to_head.py) measure issue 8's drain ratios with pgtasks and
PgQueuer alternating. Then, unless ``--skip-maxconn``, pgtasks' ``maxconn_*`` run on a second
embedded server started with ``max_connections = 100``.

    python -m bench [--systems pgtasks,pgqueuer,procrastinate] [--scale F] [--runs N]
                    [--dsn URL] [--out DIR] [--skip-maxconn] [--skip-head-to-head]

Every size can also be set from the environment (``BENCH_<FIELD>``, see ``BenchConfig``).
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
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import REPO_ROOT, BenchConfig, Figure, format_table
from bench.server import benchmark_server, machine_load, provenance

#: Systems in run order, with the module that drives each.
DRIVERS: dict[str, str] = {
    "pgtasks": "bench.peer_pgtasks",
    "pgqueuer": "bench.peer_pgqueuer",
    "procrastinate": "bench.peer_procrastinate",
}
BASELINE = "pgqueuer"
RESULTS_DIR = REPO_ROOT / "bench" / "results"

RunFn = Callable[[str, BenchConfig], Coroutine[Any, Any, dict[str, Figure]]]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- server


async def server_settings(dsn: str) -> dict[str, str]:
    """The server settings every system ran with (identical for all: one server)."""
    names = (
        "server_version",
        "max_connections",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "autovacuum",
        "jit",
    )
    conn = await asyncpg.connect(dsn)
    try:
        return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
    finally:
        await conn.close()


# --------------------------------------------------------------------------- derived figures


def ratio(a: Figure | None, b: Figure | None) -> float | None:
    """Median over median, or None when either side is missing."""
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


def baseline_ratios(results: Mapping[str, Mapping[str, Figure]]) -> dict[str, float]:
    """pgtasks / PgQueuer per shared figure (for latencies lower is better, so < 1 wins)."""
    ours, theirs = results.get("pgtasks", {}), results.get(BASELINE, {})
    out: dict[str, float] = {}
    for key in ours:
        r = ratio(ours.get(key), theirs.get(key))
        if r is not None:
            out[key] = r
    return out


@dataclasses.dataclass(frozen=True)
class Goal:
    """One target from issue 8, what this run measured for it, and over what it was judged."""

    name: str
    target: str
    value: float | None
    met: bool | None
    shown: str
    judged: str

    def line(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return (
            f"  {self.name:<48} {self.shown:>6}   target {self.target:<9} {verdict:<13} "
            f"{self.judged}"
        )


def _samples(fig: Figure | None) -> tuple[float, ...]:
    return () if fig is None else fig.samples


def goals(results: Mapping[str, Mapping[str, Figure]]) -> list[Goal]:
    """Issue 8's goals. Reported, never asserted: numbers are noisy.

    Ratios and latencies are judged on medians. The two paired figures (wake-ups on/off in
    alternating slices; each history drain against a fresh drain run just before it) on the
    median pair, with the worst pair shown next to it: the issue's "on every run" is over
    runs of `make bench`, each of which reports its median. Connections on the most, and
    refused connections on the most, of any run.
    """
    ours = results.get("pgtasks", {})
    theirs = results.get(BASELINE, {})
    found: list[Goal] = []

    def add(
        name: str, target: str, value: float | None, ok: Callable[[float], bool], judged: str
    ) -> None:
        shown = "-" if value is None else f"{value:.2f}"
        found.append(Goal(name, target, value, None if value is None else ok(value), shown, judged))

    for key, label, least in (
        ("drain_default", "drain_default / PgQueuer defaults", 2.0),
        ("drain_1_c10", "drain_1_c10 / PgQueuer batch 10", 1.5),
        ("drain_2_c10", "drain_2_c10 / PgQueuer batch 10", 1.5),
        ("drain_1", "drain_1 (c100) / PgQueuer", 3.0),
        ("drain_2", "drain_2 (c100) / PgQueuer", 3.0),
    ):
        # Judged on the alternating rounds when they ran (bench/head_to_head.py); the
        # ratio of the two suites' medians, measured minutes apart, is shown next to it.
        suites = ratio(ours.get(key), theirs.get(key))
        rounds = ours.get(f"h2h_{key}")
        shown_suites = "-" if suites is None else f"{suites:.2f}"
        add(
            label,
            f">= {least}",
            rounds.median if rounds else suites,
            lambda v, least=least: v >= least,
            (
                f"rounds [{min(rounds.samples):.2f}-{max(rounds.samples):.2f}], "
                f"suites {shown_suites}"
                if rounds
                else "medians"
            ),
        )
    conns = _samples(ours.get("connections_per_worker"))
    add(
        "connections_per_worker (c200, steps)",
        "<= 5",
        max(conns) if conns else None,
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
    limited, fresh = ours.get("drain_max_running"), ours.get("drain_1")
    add(
        "drain_max_running / drain_1 (limit not reached)",
        ">= 0.8",
        ratio(limited, fresh),
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
    for q, most in (("p50", 2.0), ("p99", 5.0)):
        fig = ours.get(f"latency_{q}_ms")
        add(
            f"latency {q} (ms), LISTEN",
            f"<= {most:.0f} ms",
            fig.median if fig else None,
            lambda v, most=most: v <= most,
            "median",
        )
    for key, label, target, ok in (
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
        max(refused) if refused else None,
        lambda v: v == 0,
        "most, any run",
    )
    return found


def format_report(
    results: Mapping[str, Mapping[str, Figure]],
    cfg: BenchConfig,
    settings: Mapping[str, Any],
) -> str:
    ratios = baseline_ratios(results)
    extra = (
        {"pgtasks / pgqueuer": {k: f"{v:.2f}x" for k, v in ratios.items()}}
        if "pgtasks" in results and BASELINE in results
        else {}
    )
    lines = [
        f"Each cell: median [min-max] of {cfg.runs} runs ({cfg.maxconn_runs} for maxconn_*). "
        "jobs/s: higher is better; ms and connections: lower is better.",
        "",
        format_table(results, extra),
    ]
    if "pgtasks" in results:
        lines += ["", "Goals (issue 8):"]
        lines += [g.line() for g in goals(results)]
    lines += ["", "Settings:"]
    lines += [f"  {name}: {json.dumps(s, default=str)}" for name, s in settings.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _load_driver(system: str) -> Any:
    try:
        return importlib.import_module(DRIVERS[system])
    except ImportError as exc:
        raise SystemExit(
            f"cannot load the {system} driver ({exc}); install the bench extra: "
            "pip install -e '.[bench]' (make bench does it)"
        ) from exc


def _driver_settings(system: str, driver: Any) -> dict[str, Any]:
    """What each driver says about its own configuration (for the report and the JSON)."""
    fn = getattr(driver, "settings", None)
    if callable(fn):
        return dict(fn())
    if system == "procrastinate":
        return {"concurrency": driver.CONCURRENCY or "default (1)", "listen_notify": True}
    return {}


#: procrastinate drains no-op jobs at ~300/s (concurrency 1): a full-size drain would take
#: minutes per run, so it drains at most this many. Its per-job cost rises with queue depth,
#: so the smaller queue favours it, if anything.
PROCRASTINATE_DRAIN_JOBS = 3_000


def config_for(system: str, cfg: BenchConfig) -> BenchConfig:
    if system == "procrastinate" and cfg.drain_jobs > PROCRASTINATE_DRAIN_JOBS:
        return dataclasses.replace(cfg, drain_jobs=PROCRASTINATE_DRAIN_JOBS)
    return cfg


async def run_all(
    dsn: str, cfg: BenchConfig, systems: list[str]
) -> tuple[dict[str, dict[str, Figure]], dict[str, Any], dict[str, str]]:
    results: dict[str, dict[str, Figure]] = {}
    meta: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for system in systems:
        driver = _load_driver(system)
        load_before = machine_load()
        started = time.perf_counter()
        _log(
            f"=== {system}: load {load_before['loadavg_1_5_15']}, "
            f"{load_before['pytest_processes']} pytest processes running"
        )
        try:
            run: RunFn = driver.run
            results[system] = await run(dsn, config_for(system, cfg))
        except Exception:
            errors[system] = traceback.format_exc()
            _log(f"=== {system} FAILED:\n{errors[system]}")
        meta[system] = {
            "settings": _driver_settings(system, driver),
            "seconds": round(time.perf_counter() - started, 1),
            "load_before": load_before,
            "load_after": machine_load(),
        }
        _log(f"=== {system}: {meta[system]['seconds']:.0f}s")
    return results, meta, errors


def run_head_to_head(
    dsn: str, cfg: BenchConfig, figures: dict[str, Figure], errors: dict[str, str]
) -> dict[str, Any]:
    """pgtasks' ``h2h_*`` ratios (bench/head_to_head.py), added to ``figures``."""
    from bench import head_to_head

    started = time.perf_counter()
    _log("=== head-to-head: pgtasks and PgQueuer drains in alternating rounds")
    try:
        figures.update(asyncio.run(head_to_head.run(dsn, cfg, _log)))
    except Exception:
        errors["head_to_head"] = traceback.format_exc()
        _log(f"=== head-to-head FAILED:\n{errors['head_to_head']}")
    return {"seconds": round(time.perf_counter() - started, 1)}


def run_maxconn(
    cfg: BenchConfig, figures: dict[str, Figure], errors: dict[str, str]
) -> dict[str, Any]:
    """pgtasks' ``maxconn_*`` figures, on a second embedded server of its own (always embedded:
    it must be started with ``max_connections = cfg.maxconn_limit``); added to ``figures``."""
    from bench import peer_pgtasks

    started = time.perf_counter()
    load_before = machine_load()
    _log(f"=== pgtasks maxconn: a server with max_connections = {cfg.maxconn_limit}")
    try:
        with benchmark_server(max_connections=cfg.maxconn_limit) as dsn:
            figures.update(asyncio.run(peer_pgtasks.run_maxconn(dsn, cfg)))
    except Exception:
        errors["pgtasks maxconn"] = traceback.format_exc()
        _log(f"=== pgtasks maxconn FAILED:\n{errors['pgtasks maxconn']}")
    seconds = round(time.perf_counter() - started, 1)
    _log(f"=== pgtasks maxconn: {seconds:.0f}s")
    return {
        "max_connections": cfg.maxconn_limit,
        "workers": cfg.maxconn_workers,
        "concurrency": cfg.maxconn_concurrency,
        "jobs": cfg.maxconn_jobs,
        "seconds": seconds,
        "load_before": load_before,
        "load_after": machine_load(),
    }


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
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pgtasks side by side with PgQueuer and procrastinate on one server.",
    )
    parser.add_argument(
        "--systems",
        default=",".join(DRIVERS),
        help=f"comma-separated subset of {','.join(DRIVERS)} (default: all, in that order)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, or BENCH_RUNS)")
    parser.add_argument(
        "--skip-maxconn",
        action="store_true",
        help="leave out the maxconn_* run (pgtasks on a second server, max_connections=100)",
    )
    parser.add_argument(
        "--skip-head-to-head",
        action="store_true",
        help="leave out the h2h_* rounds (pgtasks and PgQueuer drains alternating)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_DSN"),
        help="use this server instead of starting an embedded one (needs CREATE DATABASE)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in DRIVERS]
    if unknown or not args.systems:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(DRIVERS)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = BenchConfig.from_env()
    if args.scale != 1.0:
        cfg = cfg.scaled(args.scale)
    if args.runs is not None:
        cfg = dataclasses.replace(cfg, runs=args.runs)
    for system in args.systems:  # fail before starting a server, not after pgtasks ran
        _load_driver(system)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    with benchmark_server(args.dsn) as dsn:
        pg = asyncio.run(server_settings(dsn))
        _log(f"server: PostgreSQL {pg['server_version']} at {dsn}")
        results, meta, errors = asyncio.run(run_all(dsn, cfg, args.systems))
        head_to_head: dict[str, Any] = {}
        if {"pgtasks", BASELINE} <= results.keys() and not args.skip_head_to_head:
            head_to_head = run_head_to_head(dsn, cfg, results["pgtasks"], errors)
    if "pgtasks" in results and not args.skip_maxconn:
        meta["pgtasks"]["maxconn"] = run_maxconn(cfg, results["pgtasks"], errors)

    settings = {name: m["settings"] for name, m in meta.items()}
    print(format_report(results, cfg, settings))
    payload = {
        "timestamp": stamp,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
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
        "head_to_head": head_to_head,
        "results": {s: {k: f.as_dict() for k, f in r.items()} for s, r in results.items()},
        "pgtasks_vs_pgqueuer": baseline_ratios(results),
        "goals": [dataclasses.asdict(g) for g in goals(results)] if "pgtasks" in results else [],
        "errors": errors,
    }
    paths = write_results(payload, args.out, stamp)
    _log(f"wrote {', '.join(str(p) for p in paths)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
