"""pgtasks against PgQueuer in alternating rounds: issue 8's drain ratios from samples taken
seconds apart, not a suite apart.

`make bench` runs each system's whole suite in turn, so a ratio of two suites' medians
compares figures measured ten minutes apart, and this machine's speed drifts over minutes
(on 2026-12-02, pgtasks' own drain_1 moved between 11,000 and 19,000 jobs/s from one run to
the next, PgQueuer's between 3,700 and 6,100). Here each round runs, for every ratio, one
drain of each system in turn, the order flipped from round to round (a b, b a, ...), and
takes that round's ratio; a figure is the median over rounds, min-max across them.

The drains are make bench's own (``sample_drain``, fresh database each, same job count),
with make bench's worker settings: pgtasks at concurrency 100, at 10 and with no setting at
all; PgQueuer with batch_size 10 (its default) and with no argument at all.
"""

from __future__ import annotations

from collections.abc import Callable

from bench import peer_pgqueuer, peer_pgtasks
from bench.common import RATIO, BenchConfig, Figure, Peer, sample_drain

#: figure key -> PgQueuer's side of it; pgtasks' side is peer_pgtasks.drain_variants()[key].
#: The key names the pgtasks row whose ratio to PgQueuer it is (goals in bench/__main__.py).
THEIRS: dict[str, Callable[[], Peer]] = {
    "drain_default": lambda: peer_pgqueuer.make_peer(default=True),
    "drain_1_c10": peer_pgqueuer.make_peer,
    "drain_2_c10": peer_pgqueuer.make_peer,
    "drain_1": peer_pgqueuer.make_peer,
    "drain_2": peer_pgqueuer.make_peer,
}


async def run(dsn: str, cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, Figure]:
    """``h2h_<key>``: pgtasks / PgQueuer per round, ``cfg.runs`` rounds."""
    ratios: dict[str, list[float]] = {key: [] for key in THEIRS}
    for i in range(cfg.runs):
        ours = peer_pgtasks.drain_variants()
        for key, theirs in THEIRS.items():
            ours_peer, processes = ours[key]
            peers = [ours_peer, theirs()]
            rates: dict[str, float] = {}
            for peer in peers if i % 2 == 0 else reversed(peers):
                rates[peer.name] = await sample_drain(peer, dsn, cfg, processes)
            ratios[key].append(rates[peers[0].name] / rates[peers[1].name])
            log(
                f"[head-to-head] round {i + 1} {key}: pgtasks {rates[peers[0].name]:,.0f}, "
                f"PgQueuer {rates[peers[1].name]:,.0f} jobs/s ({ratios[key][-1]:.2f}x)"
            )
    return {f"h2h_{key}": Figure.of(values, RATIO) for key, values in ratios.items()}
