"""The text tables of the scale benchmark's report, and its targets."""

from __future__ import annotations

from typing import Any

from benchmarks.scale.config import PAGE_FLAT_TARGET
from benchmarks.tables import number, render


def load_table(loads: dict[str, dict[str, Any]]) -> str:
    headers = (
        "deployment", "runs", "wall s", "runs/s", "client CPU ms/run", "server CPU ms/run",
        "create ms", "start commit ms", "second commit ms", "errors",
    )  # fmt: skip
    lines = [
        (
            name, number(load["runs"]), number(load["wall_seconds"], 1), number(load["runs_per_s"]),
            number(load["client_cpu_ms_per_run"], 2), number(load["server_cpu_ms_per_run"], 2),
            number(load["ms_per_call"]["create"], 2), number(load["ms_per_call"]["start"], 2),
            number(load["ms_per_call"]["advance"], 2), number(sum(load["errors"].values())),
        )
        for name, load in loads.items()
    ]  # fmt: skip
    return render(headers, lines)


MEMORY_ROWS: tuple[tuple[str, str, int], ...] = (
    ("runs loaded", "runs", 0),
    ("used_memory added, MB", "used_memory_delta_mb", 0),
    ("bytes per run, all (used_memory / runs)", "bytes_per_run_all", 0),
    ("bytes per run, without op keys (steady state)", "bytes_per_run_steady", 0),
    ("  run hash (MEMORY USAGE)", "run_hash_bytes", 0),
    ("    run document JSON (names + values)", "run_json_bytes", 0),
    ("    fields stored / of them defaults", "fields", 0),
    ("    the same hash as a listpack", "run_hash_as_listpack_bytes", 0),
    ("  event stream (per run)", "stream_bytes_per_run", 0),
    ("    events per run", "events_per_run", 1),
    ("    bytes per event in the stream", "stream_bytes_per_event", 0),
    ("    marginal bytes per appended event", "marginal_bytes_per_event", 0),
    ("    event JSON", "event_json_bytes", 0),
    ("    the stream with stream-node-max-bytes 1024", "stream_bytes_per_run_small_nodes", 0),
    ("  indexes (zsets + entries hashes)", "index_bytes_per_run", 0),
    ("    zsets (all, by status; global + tenant)", "index_zset_bytes_per_run", 0),
    ("    entries hashes", "index_entries_bytes_per_run", 0),
    ("  idempotency keys, per run", "idempotency_bytes_per_run", 0),
    ("    per run with a key (3 keys)", "idempotency_bytes_per_keyed_run", 0),
    ("  key-space overhead (the rest)", "keyspace_overhead_bytes_per_run", 0),
    ("op keys (10 min TTL): live", "op_keys_live", 0),
    ("  bytes each / per run", "op_bytes", 0),
    ("used_memory_rss after the load, MB", "rss_mb", 0),
    ("used_memory per master after the load, MB", "per_master_mb", 0),
)


def memory_table(memory: dict[str, dict[str, Any]]) -> str:
    names = list(memory)
    lines = []
    for label, key, digits in MEMORY_ROWS:
        cells = [label]
        for name in names:
            m = memory[name]
            if key == "used_memory_delta_mb":
                cells.append(number(m["used_memory_delta"] / 2**20))
            elif key == "fields":
                cells.append(f"{m['run_hash_fields']:.0f} / {m['run_default_fields']:.0f}")
            elif key == "idempotency_bytes_per_run":
                per_run = m["idempotency_bytes_per_keyed_run"] * m["idempotent_runs"] / m["runs"]
                cells.append(number(per_run))
            elif key == "rss_mb":
                cells.append(number(m["used_memory_rss_after"] / 2**20))
            elif key == "per_master_mb":
                cells.append(
                    " / ".join(f"{v / 2**20:,.0f}" for v in m["used_memory_per_master"].values())
                )
            elif key == "op_bytes":
                cells.append(f"{m['op_key_bytes']:.0f} / {m['op_bytes_per_run']:.0f}")
            else:
                cells.append(number(m[key], digits))
        lines.append(cells)
    return render(("memory", *names), lines)


def throughput_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    headers: list[str] = ["api", "clients", "operation"]
    for name in names:
        headers += [f"{name} ops/s", "x RT"]
    if len(names) == 2:
        headers.append("cluster/single")
    lines = []
    for row in rows:
        cells = [row["api"], str(row["clients"]), row["label"]]
        for name in names:
            cell = row[name]
            cells += [number(cell["ops_per_s"]), f"{cell['ratio_to_round_trip']:.2f}"]
        if len(names) == 2:
            cells.append(f"{row['cluster_over_single']:.2f}")
        lines.append(cells)
    return render(headers, lines)


def list_table(
    lists: dict[str, dict[str, dict[str, Any]]], before: dict[str, dict[str, dict[str, Any]]]
) -> str:
    names = list(lists)
    headers: list[str] = ["list_runs, 50 runs", "index runs"]
    for name in names:
        headers += [f"{name} p50 ms", "p95 ms", "x 1k"]
    lines = []
    first = next(iter(lists.values()))
    reference = {"first": "small_first", "deep": "small_deep"}
    for case in first:
        cells = [first[case]["label"], number(first[case]["index_runs"])]
        for name in names:
            result = lists[name][case]
            ref = lists[name][reference[case.rsplit("_", 1)[1]]]
            cells += [
                number(result["p50_ms"], 2), number(result["p95_ms"], 2),
                f"{result['p50_ms'] / ref['p50_ms']:.2f}",
            ]  # fmt: skip
        lines.append(cells)
    for case, result in next(iter(before.values())).items():
        cells = [f"{result['label']} (before the load)", number(result["index_runs"])]
        for name in names:
            entry = before[name][case]
            ref = lists[name][reference[case.rsplit("_", 1)[1]]]
            cells += [
                number(entry["p50_ms"], 2), number(entry["p95_ms"], 2),
                f"{entry['p50_ms'] / ref['p50_ms']:.2f}",
            ]  # fmt: skip
        lines.append(cells)
    return render(headers, lines)


def evaluate_targets(lists: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    targets = []
    for name, cases in lists.items():
        for page, small in (("global_first", "small_first"), ("global_deep", "small_deep")):
            ratio = cases[page]["p50_ms"] / cases[small]["p50_ms"]
            targets.append(
                {
                    "deployment": name,
                    "operation": f"list_runs {cases[page]['label']}",
                    "target": f"p50 <= {PAGE_FLAT_TARGET} x {cases[small]['label']}",
                    "value": round(ratio, 3),
                    "met": ratio <= PAGE_FLAT_TARGET,
                }
            )
    return targets
