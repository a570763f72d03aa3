"""Some of make bench's head-to-head rounds alone: ``python -m bench.h2h_only ROUNDS KEYS``.

KEYS are figure keys of ``peer_pgtasks.drain_variants()`` (e.g. ``drain_1_c10,drain_2_c10``);
each round drains pgtasks and PgQueuer (batch 10) back to back, the order flipped every
round, as bench/head_to_head.py does inside ``make bench``. For a quick check of one figure
after a change to the claim path; ``make bench`` remains the figure of record.
"""

import asyncio
import statistics
import sys

from bench import peer_pgqueuer, peer_pgtasks
from bench.common import BenchConfig, sample_drain
from bench.server import benchmark_server


async def main(dsn: str, rounds: int, keys: list[str]) -> None:
    cfg = BenchConfig()
    out: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        for key in keys:
            ours, procs = peer_pgtasks.drain_variants()[key]
            theirs = peer_pgqueuer.make_peer()
            peers = [ours, theirs]
            rates: dict[str, float] = {}
            for p in peers if i % 2 == 0 else reversed(peers):
                rates[p.name] = await sample_drain(p, dsn, cfg, procs)
            r = rates[ours.name] / rates[theirs.name]
            out[key].append(r)
            print(
                f"round {i + 1} {key}: pgtasks {rates[ours.name]:,.0f} "
                f"PgQueuer {rates[theirs.name]:,.0f} ({r:.2f}x)",
                flush=True,
            )
    for k, v in out.items():
        print(
            f"{k}: median {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}], {len(v)} rounds"
        )


if __name__ == "__main__":
    with benchmark_server(None) as dsn:
        asyncio.run(main(dsn, int(sys.argv[1]), sys.argv[2].split(",")))
