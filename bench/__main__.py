"""`make bench` / `python -m bench`: every system on one embedded server, one table.

The parts, in order (``--only`` picks some): ``suites``, each system's figures; ``h2h``, drains
in alternating rounds (pgtasks, PgQueuer, and pgtasks at ``--baseline REV``); ``floor``,
``ceiling``, ``filtered``, ``bulk`` (bench/floors.py); ``maxconn``, a second server. Prints the
table and the targets, and writes them with the config, server, commit and machine load to
``bench/results/<timestamp>.json`` and ``latest.json`` (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import operator
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import floors
from bench.harness import (
    RATIO,
    RESULTS_DIR,
    BenchConfig,
    Figure,
    alternate,
    benchmark_server,
    figures,
    format_table,
    log,
    machine_load,
    provenance,
    revision_tree,
    sample_drain,
    server_settings,
)

#: Systems in run order, with the module that drives each.
DRIVERS = {s: f"bench.peer_{s}" for s in ("pgtasks", "pgqueuer", "procrastinate")}
PEER = "pgqueuer"
#: The least pgtasks / pgtasks@REV of a drain: a change may cost a drain at most 3 %.
REVISION_FLOOR = 0.97
PARTS = ("suites", "h2h", *floors.SCENARIOS, "maxconn")
Results = Mapping[str, Mapping[str, Figure]]


def ratio(a: Figure | None, b: Figure | None) -> float | None:
    return None if a is None or b is None or b.median == 0 else a.median / b.median


def peer_ratios(results: Results) -> dict[str, float]:
    """pgtasks / PgQueuer per shared figure (for latencies and CPU, below 1 is better)."""
    ours, theirs = results.get("pgtasks", {}), results.get(PEER, {})
    pairs = {key: ratio(ours.get(key), theirs.get(key)) for key in ours}
    return {key: r for key, r in pairs.items() if r is not None}


def revision(results: Results) -> str | None:
    """The name of the baseline revision's system (``pgtasks@REV``), if one ran."""
    return next((s for s in results if s.startswith("pgtasks@")), None)


def revision_ratios(results: Results) -> dict[str, Figure]:
    """pgtasks / pgtasks@REV per drain of the rounds, each sample one round's pair."""
    ours, theirs = results.get("pgtasks", {}), results.get(revision(results) or "", {})
    return {
        key: Figure.of((a / b for a, b in zip(ours[key].samples, fig.samples, strict=True)), RATIO)
        for key, fig in theirs.items()
        if key.endswith("_rounds") and key in ours
    }


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


_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, "=": operator.eq}

#: Targets judged on one figure: (key, label, target, "median" of the runs, or the "worst").
#: bench/floors.py's are taken within rounds; "every round" means judged on the worst.
SIMPLE_GOALS = (
    ("latency_p50_ms", "latency p50 (ms), LISTEN", "<= 2 ms", "median"),
    ("latency_p99_ms", "latency p99 (ms), LISTEN", "<= 5 ms", "median"),
    ("latency_p50_over_floor", "latency p50 / floor, same rounds", "<= 1.5", "median"),
    ("latency_p50_over_pgqueuer", "latency p50 / PgQueuer, every round", "<= 0.6", "worst"),
    ("latency_p99_over_pgqueuer", "latency p99 / PgQueuer, every round", "<= 0.6", "worst"),
    ("latency_tail_count", "latency: jobs that waited for a poll", "= 0", "worst"),
    ("drain_1_over_ceiling", "drain_1 (c100) / raw claim ceiling", ">= 0.6", "median"),
    ("event_latency_p50_ms", "event sent to task running again, p50", "<= 50 ms", "median"),
    ("filtered_claim_p50_ms", "claim of one type behind others, p50 (ms)", "<= 2 ms", "median"),
    ("bulk_over_pgqueuer", "bulk submit / PgQueuer", ">= 2", "median"),
    ("connections_per_worker", "connections_per_worker (c200, steps)", "<= 5", "worst"),
    ("wf_chord_ratio", "chord children / plain drain", ">= 0.7", "median"),
    ("wf_chord_callback_delay_ms", "chord callback start (ms)", "<= 50 ms", "median"),
    ("wf_chain_handoff_p50_ms", "chain hand-off p50 (ms)", "<= 5 ms", "median"),
    ("maxconn_connection_errors", "maxconn_connection_errors", "= 0", "worst"),
)


def goals(results: Results) -> list[Goal]:
    """The targets pgtasks is held to, reported, never asserted (the numbers are noisy): drain
    ratios on the median round (the suites' medians, minutes apart, shown next to it); paired
    figures on the median pair, the worst shown; the rest as :data:`SIMPLE_GOALS` says."""
    ours, theirs = results.get("pgtasks", {}), results.get(PEER, {})
    found: list[Goal] = []

    def add(name: str, target: str, value: float | None, judged: str) -> None:
        op, bound = target.split()[:2]
        met = None if value is None else _OPS[op](value, float(bound))
        found.append(Goal(name, target, value, met, judged))

    def pairs(a: str, b: str, f: Callable[[float, float], float]) -> list[float]:
        both = zip(*(ours[k].samples if k in ours else () for k in (a, b)), strict=False)
        return sorted(f(x, y) for x, y in both if y)

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
            add(label, f">= {least}", rounds.median, judged)
        else:
            add(label, f">= {least}", suites, "medians")
    on_off = pairs("enqueue_single_paired", "enqueue_single_no_wakeup", operator.truediv)
    judged = f"median pair (lowest {on_off[0]:.2f})" if on_off else "median pair"
    add("wake-ups on / off (enqueue_single pairs)", ">= 0.85", _median(on_off), judged)
    limited = ratio(ours.get("drain_max_running"), ours.get("drain_1"))
    add("drain_max_running / drain_1 (limit not reached)", ">= 0.8", limited, "medians")
    drops = pairs("drain_1_history", "drain_1_history_fresh", lambda h, f: (1 - h / f) * 100)
    judged = f"median pair (largest {drops[-1]:.1f})" if drops else "median pair"
    add("drain_1_history drop (%)", "< 15 %", _median(drops), judged)
    waiting = pairs("drain_1_waiting", "drain_1_waiting_plain", operator.truediv)
    judged = f"median pair (lowest {waiting[0]:.2f})" if waiting else "median pair"
    add("drain_1 with 10,000 waiting tasks / plain drain_1", ">= 0.9", _median(waiting), judged)
    otel = pairs("drain_1_waiting_plain", "drain_1_no_otel", operator.truediv)
    judged = f"median pair (lowest {otel[0]:.2f})" if otel else "median pair"
    add("drain_1, OTel API without provider / without", ">= 0.97", _median(otel), judged)
    for key, label, target, judged in SIMPLE_GOALS:
        fig, worst = ours.get(key), max if target[0] in "<=" else min
        value = None if fig is None else fig.median if judged == "median" else worst(fig.samples)
        shown = "" if fig is None else " of " + " ".join(f"{v:.2f}" for v in fig.samples)
        add(label, target, value, judged + shown)
    for key, fig in revision_ratios(results).items():
        judged = f"median round [{min(fig.samples):.3f}-{max(fig.samples):.3f}]"
        add(f"{key} / {revision(results)}", f">= {REVISION_FLOOR}", fig.median, judged)
    return found


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def format_report(results: Results, cfg: BenchConfig, settings: Mapping[str, Any]) -> str:
    ratios = peer_ratios(results)
    extra = {}
    if "pgtasks" in results and PEER in results:
        extra = {"pgtasks / pgqueuer": {k: f"{v:.2f}x" for k, v in ratios.items()}}
    if rev := revision(results):
        extra[f"pgtasks / {rev}"] = {
            k: f"{f.median:.3f} [{min(f.samples):.3f}-{max(f.samples):.3f}] "
            + ("ok" if f.median >= REVISION_FLOOR else f"BELOW {REVISION_FLOOR}")
            for k, f in revision_ratios(results).items()
        }
    lines = [
        f"Each cell: median [min-max] of {cfg.runs} runs ({cfg.maxconn_runs} for maxconn_*). "
        "jobs/s: higher is better; ms, us and connections: lower is better.",
        "",
        format_table(results, extra),
    ]
    if found := [g for g in goals(results) if g.met is not None]:  # the others, JSON only
        lines += ["", "Targets:", *(g.line() for g in found)]
    lines += ["", "Settings:"]
    lines += [f"  {name}: {json.dumps(s, default=str)}" for name, s in settings.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


async def head_to_head(
    dsn: str, cfg: BenchConfig, systems: list[str], tree: tuple[str, Path] | None
) -> dict[str, dict[str, Figure]]:
    """``runs`` rounds (``harness.alternate``) of each pgtasks drain back to back with
    PgQueuer's match (``PGQUEUER_MATCHED``, if in ``systems``) and with the same drain of the
    revision ``tree`` (name, checkout); without ``tree`` only the matched drains. Each side's
    rate is ``<key>_rounds`` (CPU per job ``<key>_rounds_*_cpu_us``), pgtasks / PgQueuer per
    round ``h2h_<key>``."""
    from bench.peer_pgtasks import PGQUEUER_MATCHED, drain_variants

    lineup = {"pgtasks": drain_variants(cfg)}
    if tree is not None:
        lineup[tree[0]] = drain_variants(cfg, name=tree[0], tree=tree[1])
    if PEER in systems:
        from bench import peer_pgqueuer

        lineup[PEER] = {
            k: (peer_pgqueuer.make_peer(default=k == "drain_default"), n, jobs)
            for k, (_, n, jobs) in lineup["pgtasks"].items()
            if k in PGQUEUER_MATCHED
        }
    keys = list(lineup["pgtasks"]) if tree is not None else list(PGQUEUER_MATCHED)
    sides = [(s, key) for key in keys for s in lineup if key in lineup[s]]
    drains = [
        lambda v=lineup[s][key]: sample_drain(v[0], dsn, cfg, v[1], jobs=v[2]) for s, key in sides
    ]
    rates: dict[str, dict[str, list[float]]] = {s: {} for s in lineup}
    async for i, samples in alternate(cfg.runs, *drains):
        for (system, key), sample in zip(sides, samples, strict=True):
            assert sample.rate is not None  # a strict drain finishes or raises
            rates[system].setdefault(f"{key}_rounds", []).append(sample.rate)
            for side, cpu in (("worker", sample.worker_cpu_us), ("server", sample.server_cpu_us)):
                if cpu is not None:
                    rates[system].setdefault(f"{key}_rounds_{side}_cpu_us", []).append(cpu)
        for key in keys:
            shown = [
                f"{s} {r[f'{key}_rounds'][-1]:,.0f}" for s, r in rates.items() if key in lineup[s]
            ]
            log(f"[head-to-head] round {i + 1} {key}: {', '.join(shown)} jobs/s")
    out = {system: figures(values) for system, values in rates.items()}
    for key in PGQUEUER_MATCHED if PEER in rates else ():
        pairs = zip(rates["pgtasks"][f"{key}_rounds"], rates[PEER][f"{key}_rounds"], strict=True)
        out["pgtasks"][f"h2h_{key}"] = Figure.of((a / b for a, b in pairs), RATIO)
    return out


def write_results(payload: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    paths = [out_dir / f"{stamp}.json", out_dir / "latest.json"]
    for path in paths:  # whole or not at all
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").replace(path)
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--systems", default=",".join(DRIVERS), help="comma-separated systems (default: all)")
    add("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    scale = float(os.environ.get("BENCH_SCALE", 1))
    add("--scale", type=float, default=scale, help="multiply every job count (BENCH_SCALE)")
    add("--runs", type=int, help="runs per figure (default 5, or BENCH_RUNS)")
    add("--baseline", metavar="REV", help="pgtasks at git revision REV in the h2h rounds too")
    add("--dsn", default=os.environ.get("BENCH_DSN"), help="an existing server (CREATE DATABASE)")
    add("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.only or not args.only <= set(PARTS):
        parser.error(f"choose parts from {', '.join(PARTS)}")
    if not args.systems or not set(args.systems) <= DRIVERS.keys():
        parser.error(f"choose systems from {', '.join(DRIVERS)}")
    if args.baseline and ("h2h" not in args.only or "pgtasks" not in args.systems):
        parser.error("--baseline runs in the h2h part, with pgtasks among the systems")
    if (args.runs is not None and args.runs < 1) or args.scale <= 0:
        parser.error("--runs must be at least 1 and --scale positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cfg = BenchConfig.from_env()
    if args.scale != 1:
        cfg = cfg.scaled(args.scale)
    if args.runs is not None:
        cfg = dataclasses.replace(cfg, runs=args.runs)
    drivers = {}
    for system in args.systems:  # fail before starting a server, not after pgtasks ran
        try:
            drivers[system] = importlib.import_module(DRIVERS[system])
        except ImportError as exc:
            msg = f"cannot load the {system} driver ({exc}): pip install -e '.[bench]'"
            raise SystemExit(msg) from exc

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    started, only, systems = time.perf_counter(), args.only, set(args.systems)
    results: dict[str, dict[str, Figure]] = {}
    meta: dict[str, Any] = {s: {"settings": d.settings()} for s, d in drivers.items()}
    errors: dict[str, str] = {}

    def part(name: str, run: Callable[[], Mapping[str, dict[str, Figure]]]) -> None:
        """Run one part, timed, the load noted before and after; a failure is reported."""
        load = machine_load()
        log(f"=== {name}: load {load['loadavg_1_5_15']}, {load['pytest_processes']} pytest")
        t0 = time.perf_counter()
        try:
            for system, figures in run().items():
                results.setdefault(system, {}).update(figures)
        except Exception:
            errors[name] = traceback.format_exc()
            log(f"=== {name} FAILED:\n{errors[name]}")
        seconds = round(time.perf_counter() - t0, 1)
        meta.setdefault(name, {}).update(seconds=seconds, load_before=load)
        meta[name]["load_after"] = machine_load()
        log(f"=== {name}: {seconds:.0f}s")

    with contextlib.ExitStack() as stack:
        tree: tuple[str, Path] | None = None
        if args.baseline:
            folder, commit = stack.enter_context(revision_tree(args.baseline))
            tree = (f"pgtasks@{args.baseline}", folder)
            meta[tree[0]] = {"settings": {"commit": commit, "as": "pgtasks' own", "only": "h2h"}}
        dsn = stack.enter_context(benchmark_server(args.dsn))
        pg = asyncio.run(server_settings(dsn))
        log(f"server: PostgreSQL {pg['server_version']} at {dsn}")
        for system, driver in drivers.items() if "suites" in only else ():
            part(system, lambda d=driver, s=system: {s: asyncio.run(d.run(dsn, cfg, log))})
        if "pgtasks" in systems and "h2h" in only and (PEER in systems or tree):
            part("head_to_head", lambda: asyncio.run(head_to_head(dsn, cfg, args.systems, tree)))
        if "pgtasks" in systems and only & set(floors.SCENARIOS):
            part("floors", lambda: asyncio.run(floors.run(dsn, cfg, args.systems, only, log)))
    if "pgtasks" in systems and "maxconn" in only:
        from bench import peer_pgtasks

        def maxconn() -> dict[str, dict[str, Figure]]:
            with benchmark_server(max_connections=cfg.maxconn_limit) as maxconn_dsn:
                return {"pgtasks": asyncio.run(peer_pgtasks.run_maxconn(maxconn_dsn, cfg, log))}

        part("maxconn", maxconn)

    settings = {name: m["settings"] for name, m in meta.items() if "settings" in m}
    print(format_report(results, cfg, settings))
    payload = {
        "timestamp": stamp,
        "command": " ".join(["python -m bench", *argv]),
        "seconds": round(time.perf_counter() - started, 1),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "code": provenance(),
        "server": {"embedded": args.dsn is None, **pg},
        "config": dataclasses.asdict(cfg),
        "parts": meta,
        "results": {s: {k: f.as_dict() for k, f in r.items()} for s, r in results.items()},
        "pgtasks_vs_pgqueuer": peer_ratios(results),
        "pgtasks_vs_baseline": {k: f.as_dict() for k, f in revision_ratios(results).items()},
        "goals": [dataclasses.asdict(g) for g in goals(results)] if "pgtasks" in results else [],
        "errors": errors,
    }
    paths = write_results(payload, args.out, stamp)
    log(f"wrote {', '.join(str(p) for p in paths)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
