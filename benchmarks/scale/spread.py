"""Each primary's share of Redis server CPU under a create-heavy load on the 3-primary cluster.

The global indexes (every run, runs by status) were one slot, ``{all}``: every create and every
status change of every tenant wrote there, so the primary holding it did more than its share of
the work and bounded the cluster's create rate however many primaries were added. They are now
``GLOBAL_SHARDS`` slots spread over the slot range (``mpstate.redis.keys``).

The same cluster is loaded once per layout and round, emptied in between: loader processes
create runs over 100 tenants (every tenth with an idempotency key) and start each one (a status
change), with ``GLOBAL_SHARDS`` set to 1 in the loaders (the layout before: ``mp:idx:{all}``) or
left at the shipped value. Each primary's CPU (``INFO cpu``, its main thread where reported) is
read before and after each load; its share is its part of the sum. The largest share predicts
the cluster's capacity: with N primaries and the busiest doing a share s of the work, the
cluster saturates at 1 / s times what one primary can do alone (N at best).
"""

from __future__ import annotations

from typing import Any

from benchmarks.scale.config import Config, log
from benchmarks.scale.loading import Target, run_load
from benchmarks.tables import Goal, number, render
from mpstate.redis.keys import GLOBAL_SHARDS

__all__ = ["SHARE_GOAL", "measure_spread", "spread_goals", "spread_table"]

#: No primary may do more than this share of the cluster's server CPU (3 primaries: 1/3 ideal).
SHARE_GOAL = 0.40
#: Writes per loaded run: a create and a start (both write the global indexes).
WRITES = 2


def measure_spread(
    target: Target, config: Config, *, runs: int, rounds: int, pool_context: Any
) -> dict[str, dict[str, Any]]:
    """Per layout (``"1"``: one slot, before; ``str(GLOBAL_SHARDS)``: now): each primary's CPU
    seconds and share, the load rate, and errors, summed over ``rounds`` alternating loads."""
    layouts = (1, GLOBAL_SHARDS)
    cpu: dict[int, dict[int, float]] = {
        shards: dict.fromkeys(target.admins, 0.0) for shards in layouts
    }
    rates: dict[int, list[float]] = {shards: [] for shards in layouts}
    errors: dict[int, int] = dict.fromkeys(layouts, 0)
    for round_number in range(rounds):
        for shards in layouts:
            for admin in target.admins.values():
                admin.flushall()
            log(f"spread: round {round_number + 1}/{rounds}, {shards} shard(s): {runs:,} runs")
            load = run_load(
                target, config, count=runs, first=0, tenant=None, loaders=config.loaders,
                pool_context=pool_context, writes=WRITES, index_shards=shards,
            )  # fmt: skip
            for port, seconds in load["main_thread_cpu_seconds_by_primary"].items():
                cpu[shards][int(port)] += seconds
            rates[shards].append(load["runs_per_s"])
            errors[shards] += sum(load["errors"].values())
    for admin in target.admins.values():
        admin.flushall()
    results = {}
    for shards in layouts:
        total = sum(cpu[shards].values()) or 1.0
        results[str(shards)] = {
            "shards": shards,
            "runs_per_round": runs,
            "rounds": rounds,
            "writes_per_run": WRITES,
            "cpu_seconds_by_primary": {str(p): round(s, 3) for p, s in cpu[shards].items()},
            "share_by_primary": {str(p): round(s / total, 4) for p, s in cpu[shards].items()},
            "largest_share": round(max(cpu[shards].values()) / total, 4),
            "runs_per_s": rates[shards],
            "errors": errors[shards],
        }
    return results


def spread_table(results: dict[str, dict[str, Any]]) -> str:
    ports = list(next(iter(results.values()))["share_by_primary"])
    headers = ("global indexes", *(f"primary :{port}" for port in ports), "largest", "runs/s")
    lines = [
        (
            "1 slot (before)" if result["shards"] == 1 else f"{result['shards']} shards",
            *(f"{result['share_by_primary'][port]:.1%}" for port in ports),
            f"{result['largest_share']:.1%}",
            " / ".join(number(rate) for rate in result["runs_per_s"]),
        )
        for result in results.values()
    ]
    return render(headers, lines)


def spread_goals(results: dict[str, dict[str, Any]]) -> list[Goal]:
    before = results["1"]
    after = results[str(GLOBAL_SHARDS)]
    primaries = len(after["share_by_primary"])
    return [
        Goal(
            "largest_primary_cpu_share",
            f"busiest primary's share of server CPU, create + start, {GLOBAL_SHARDS} shards",
            "<=",
            SHARE_GOAL,
            after["largest_share"],
            unit="of the total",
            note=f"{primaries} primaries: {1 / primaries:.3f} is even; capacity about"
            f" {1 / after['largest_share']:.2f} x one primary",
        ),
        Goal(
            "largest_primary_cpu_share_one_slot",
            "the same with the global indexes in one slot (the layout before)",
            "floor",
            round(1 / primaries, 3),
            before["largest_share"],
            unit="of the total",
            note=f"capacity about {1 / before['largest_share']:.2f} x one primary",
        ),
    ]
