"""A run's step graph laid out for inline SVG: one column per dependency depth.

A step's depth is 0 when it waits for nothing, else one more than the deepest step it waits for
(``mpstate.graph.dependencies``), so each edge points right. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpstate.graph import dependencies
from mpstate.models import PipelineRun

__all__ = ["Edge", "GraphView", "Node", "build_graph"]

NODE_WIDTH = 150
NODE_HEIGHT = 32
COLUMN_GAP = 50
ROW_GAP = 16
MARGIN = 10


@dataclass(frozen=True, slots=True)
class Node:
    step_id: str
    status: str
    x: float
    y: float
    width: int = NODE_WIDTH
    height: int = NODE_HEIGHT


@dataclass(frozen=True, slots=True)
class Edge:
    """An SVG path from a dependency's right side to its dependent's left side."""

    source: str
    target: str
    path: str


@dataclass(frozen=True, slots=True)
class GraphView:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]


def _depths(graph: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Each step's depth; a graph is validated acyclic at create, so ``len(graph)`` passes
    settle it (the bound also stops a corrupt record from looping)."""
    depth = dict.fromkeys(graph, 0)
    for _ in range(len(graph)):
        changed = False
        for step_id, needs in graph.items():
            wanted = max((depth.get(need, 0) + 1 for need in needs), default=0)
            if wanted != depth[step_id]:
                depth[step_id], changed = wanted, True
        if not changed:
            break
    return depth


def build_graph(run: PipelineRun) -> GraphView:
    """The layout of ``run``'s steps, in definition order within each column."""
    graph = dependencies(run.steps)
    depth = _depths(graph)
    per_column: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for step in run.steps:
        column = depth[step.step_id]
        row = per_column.get(column, 0)
        per_column[column] = row + 1
        nodes[step.step_id] = Node(
            step.step_id,
            step.status.value,
            MARGIN + column * (NODE_WIDTH + COLUMN_GAP),
            MARGIN + row * (NODE_HEIGHT + ROW_GAP),
        )
    edges = []
    for step_id, needs in graph.items():
        target = nodes[step_id]
        for need in needs:
            source = nodes.get(need)
            if source is None:
                continue
            x1, y1 = source.x + NODE_WIDTH, source.y + NODE_HEIGHT / 2
            x2, y2 = target.x, target.y + NODE_HEIGHT / 2
            middle = (x1 + x2) / 2
            path = (
                f"M{x1:.1f},{y1:.1f} C{middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            )
            edges.append(Edge(need, step_id, path))
    columns = max(per_column, default=0) + 1
    rows = max(per_column.values(), default=1)
    return GraphView(
        width=2 * MARGIN + columns * NODE_WIDTH + (columns - 1) * COLUMN_GAP,
        height=2 * MARGIN + rows * NODE_HEIGHT + (rows - 1) * ROW_GAP,
        nodes=list(nodes.values()),
        edges=edges,
    )
