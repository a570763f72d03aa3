"""Smoke run of both peer drivers against one server, printed side by side.

``python -m bench._try_peers --dsn postgresql://... [--scale F]``. Exists to prove the peer
drivers work end to end before the real ``python -m bench`` entry point wires in pgtasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench import peer_pgqueuer, peer_procrastinate
from bench.common import BenchConfig, Figure, format_table


async def _main(dsn: str, cfg: BenchConfig, out: Path | None) -> None:
    results: dict[str, dict[str, Figure]] = {}
    for name, driver in (("procrastinate", peer_procrastinate), ("pgqueuer", peer_pgqueuer)):
        started = time.perf_counter()
        results[name] = await driver.run(dsn, cfg)
        print(f"{name}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(format_table(results))
    if out is not None:
        payload = {
            "config": cfg.__dict__,
            "results": {n: {k: f.as_dict() for k, f in r.items()} for n, r in results.items()},
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._try_peers")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn (or BENCH_DSN) is required")
    cfg = BenchConfig.from_env()
    if args.scale != 1.0:
        cfg = cfg.scaled(args.scale)
    asyncio.run(_main(args.dsn, cfg, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
