"""The report: per-kind figures over the rounds, the goals, and the text tables."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from benchmarks.celery_hooks.config import (
    CHAIN_RATIO_GOAL,
    KINDS,
    STORE_COMMANDS_GOAL,
    STORE_ROUND_TRIPS_FLOOR,
    STORE_SERVER_US_GOAL,
    Config,
)
from benchmarks.celery_hooks.worker import RoundResult
from benchmarks.tables import Goal, number, render


@dataclass(frozen=True, slots=True)
class KindTotals:
    """One kind's figures per step over all its rounds (unrounded, for the differences)."""

    steps: int
    commands: Counter[str]
    server_us: float

    @classmethod
    def of(cls, results: list[RoundResult]) -> KindTotals:
        steps = sum(r.steps for r in results)
        merged: Counter[str] = Counter()
        for result in results:
            merged.update(result.commands)
        return cls(
            steps,
            Counter({name: calls / steps for name, calls in merged.items()}),
            1e6 * sum(r.server_cpu_seconds for r in results) / steps,
        )

    @property
    def commands_per_step(self) -> float:
        return sum(self.commands.values())


def command_difference(minuend: KindTotals, subtrahend: KindTotals) -> dict[str, float]:
    """Commands per step that ``minuend`` runs beyond ``subtrahend``, by command (>= 0.02)."""
    names = sorted(set(minuend.commands) | set(subtrahend.commands))
    differences = {name: minuend.commands[name] - subtrahend.commands[name] for name in names}
    return {name: round(value, 2) for name, value in differences.items() if abs(value) >= 0.02}


def kind_label(kind: str, steps: int) -> str:
    return {
        "bare": "bare no-op task",
        "chain": f"Celery chain of {steps} no-op tasks",
        "floor": f"floor: 2 minimal writes per step ({steps}-step runs)",
        "hooks": f"PipelineTask no-op step ({steps}-step runs)",
    }[kind]


def summarize(
    rounds: list[dict[str, RoundResult]], config: Config
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A row per kind (medians over rounds, ratios to bare, to chain and to the floor), and the
    commands."""
    results = {kind: [measured[kind] for measured in rounds] for kind in KINDS}
    totals = {kind: KindTotals.of(results[kind]) for kind in KINDS}

    def row(kind: str) -> dict[str, Any]:
        measured = results[kind]
        steps = totals[kind].steps
        rate = statistics.median(r.rate for r in measured)
        publish_trips = sum(r.publish_round_trips for r in measured) / steps
        worker_trips = sum(r.drain_round_trips for r in measured) / steps
        figures: dict[str, Any] = {
            "name": kind,
            "label": kind_label(kind, config.steps),
            "steps_per_s": round(rate, 1),
            "us_per_step": round(1e6 / rate, 0),
            "end_to_end_steps_per_s": round(
                statistics.median(r.end_to_end_rate for r in measured), 1
            ),
            "publish_per_s": round(
                statistics.median(r.steps / r.publish_seconds for r in measured), 1
            ),
            "store_round_trips_per_step": round(publish_trips + worker_trips, 2),
            "store_round_trips_per_step_publisher": round(publish_trips, 2),
            "store_round_trips_per_step_worker": round(worker_trips, 2),
            "redis_commands_per_step": round(totals[kind].commands_per_step, 2),
            "evalsha_per_step": round(totals[kind].commands.get("evalsha", 0.0), 2),
            "server_cpu_us_per_step": round(totals[kind].server_us, 1),
            "steps_measured": steps,
        }
        for base in ("chain", "bare", "floor"):
            pairs = list(zip(measured, results[base], strict=True))
            drain = [r.rate / b.rate for r, b in pairs]
            end_to_end = [r.end_to_end_rate / b.end_to_end_rate for r, b in pairs]
            figures[f"ratio_to_{base}"] = round(statistics.median(drain), 4)
            figures[f"end_to_end_ratio_to_{base}"] = round(statistics.median(end_to_end), 4)
            if base != kind:
                figures[f"ratio_to_{base}_per_round"] = [round(r, 4) for r in drain]
                figures[f"end_to_end_ratio_to_{base}_per_round"] = [round(r, 4) for r in end_to_end]
        # The store's share: what hooks cost beyond a chain (and beyond bare tasks); the
        # baselines run no store call.
        for suffix, base in (("", "chain"), ("_vs_bare", "bare")):
            commands = server_us = 0.0
            if kind == "hooks":
                commands = totals[kind].commands_per_step - totals[base].commands_per_step
                server_us = totals[kind].server_us - totals[base].server_us
            figures[f"store_redis_commands_per_step{suffix}"] = round(commands, 2)
            figures[f"store_server_cpu_us_per_step{suffix}"] = round(server_us, 1)
        figures["rounds"] = [r.as_json() for r in measured]
        return figures

    rows = [row(kind) for kind in KINDS]
    hooks = results["hooks"]
    evalsha_calls = sum(r.commands["evalsha"] for r in hooks)
    rows[-1]["evalsha_server_us_per_call"] = round(
        sum(r.command_usec["evalsha"] for r in hooks) / max(evalsha_calls, 1), 1
    )

    def per_task(kind: str) -> dict[str, float]:
        return {k: round(v, 2) for k, v in sorted(totals[kind].commands.items())}

    commands = {
        "broker_per_task": per_task("bare"),
        "chain_per_task": per_task("chain"),
        "store_per_step": command_difference(totals["hooks"], totals["chain"]),
        "store_per_step_vs_bare": command_difference(totals["hooks"], totals["bare"]),
        "note": "server commands per task over whole backlogs (publish + drain), from INFO "
        "commandstats, script-internal commands included; store_per_step = hooks minus chain "
        "(both publish each step after the first from the worker, so the broker's commands per "
        "step are the same on both sides); store_per_step_vs_bare = hooks minus bare tasks "
        "(all published by the benchmark's process)",
    }
    return rows, commands


def evaluate_goals(rows: list[dict[str, Any]]) -> list[Goal]:
    """The issue's goals against this run's rows."""
    by_name = {row["name"]: row for row in rows}
    hooks, floor = by_name["hooks"], by_name["floor"]
    return [
        Goal(
            "hooks_to_chain_end_to_end",
            "hooks / bare Celery chain, end to end (median of rounds)",
            ">=",
            CHAIN_RATIO_GOAL,
            hooks["end_to_end_ratio_to_chain"],
            unit="x chain",
            note=f"drain {hooks['ratio_to_chain']:.3f} x chain; x bare:"
            f" e2e {hooks['end_to_end_ratio_to_bare']:.3f}, drain {hooks['ratio_to_bare']:.3f}",
        ),
        Goal(
            "floor_to_chain_end_to_end",
            "the floor / chain, end to end: the hooks' goal is reachable here only if met",
            ">=",
            CHAIN_RATIO_GOAL,
            floor["end_to_end_ratio_to_chain"],
            unit="x chain",
            note=f"hooks / floor, end to end {hooks['end_to_end_ratio_to_floor']:.3f};"
            f" floor drain {floor['ratio_to_chain']:.3f} x chain",
        ),
        Goal(
            "store_server_cpu_us_per_step",
            "store's Redis CPU per step (hooks - chain)",
            "<=",
            STORE_SERVER_US_GOAL,
            hooks["store_server_cpu_us_per_step"],
            unit="us",
            digits=0,
            note=f"total {hooks['server_cpu_us_per_step']:,.0f} us/step (broker + store);"
            f" hooks - bare {hooks['store_server_cpu_us_per_step_vs_bare']:,.0f}",
        ),
        Goal(
            "store_redis_commands_per_step",
            "store's Redis commands per step (hooks - chain)",
            "<=",
            STORE_COMMANDS_GOAL,
            hooks["store_redis_commands_per_step"],
            digits=1,
            note=f"total {hooks['redis_commands_per_step']:.1f}/step;"
            f" hooks - bare {hooks['store_redis_commands_per_step_vs_bare']:.1f}",
        ),
        Goal(
            "store_round_trips_per_step",
            "store round trips per step (informational)",
            "floor",
            STORE_ROUND_TRIPS_FLOOR,
            hooks["store_round_trips_per_step"],
            digits=2,
            note=f"publisher {hooks['store_round_trips_per_step_publisher']:.2f}"
            f" + worker {hooks['store_round_trips_per_step_worker']:.2f}",
        ),
    ]


def render_table(rows: list[dict[str, Any]]) -> str:
    headers = (
        "kind", "steps/s", "us/step", "x chain", "x bare", "e2e/s", "e2e x chain", "e2e x bare",
        "store RTs/step", "(pub+worker)", "cmds/step", "store cmds", "(vs bare)", "EVALSHA",
        "srv us", "store srv us", "(vs bare)",
    )  # fmt: skip
    lines = []
    for row in rows:
        hooks = row["name"] == "hooks"
        lines.append(
            (
                row["label"],
                number(row["steps_per_s"]),
                number(row["us_per_step"]),
                f"{row['ratio_to_chain']:.3f}",
                f"{row['ratio_to_bare']:.3f}",
                number(row["end_to_end_steps_per_s"]),
                f"{row['end_to_end_ratio_to_chain']:.3f}",
                f"{row['end_to_end_ratio_to_bare']:.3f}",
                number(row["store_round_trips_per_step"], 2),
                f"{row['store_round_trips_per_step_publisher']:.2f}"
                f"+{row['store_round_trips_per_step_worker']:.2f}",
                number(row["redis_commands_per_step"], 1),
                number(row["store_redis_commands_per_step"], 1) if hooks else "",
                number(row["store_redis_commands_per_step_vs_bare"], 1) if hooks else "",
                number(row["evalsha_per_step"], 2),
                number(row["server_cpu_us_per_step"]),
                number(row["store_server_cpu_us_per_step"]) if hooks else "",
                number(row["store_server_cpu_us_per_step_vs_bare"]) if hooks else "",
            )
        )
    return render(headers, lines)


def render_tree(rows: list[tuple[int, str, float, float]], unit: str) -> str:
    width = max((2 * depth + len(name) for depth, name, _, _ in rows), default=10)
    lines = [f"  {'':<{width}}  {'us/' + unit:>9}  {'calls/' + unit:>10}"]
    for depth, name, us, calls in rows:
        label = "  " * depth + name
        calls_text = f"{calls:.2f}" if calls else ""
        lines.append(f"  {label:<{width}}  {us:>9,.0f}  {calls_text:>10}")
    return "\n".join(lines)
