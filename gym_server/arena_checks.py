"""Structural checks of an arena that need no execution: the part of validation that is pure data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from gym_server.schemas import SchemaError, compile_validator

if TYPE_CHECKING:
    from gym_server.models import Arena


class Node(Protocol):
    """A sub-task as far as the dependency graph goes (an arena's `SubTask`, a synthesized QA item's)."""

    id: str
    depends_on: list[str]


def dependency_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in `node -> depends_on` edges, as a list of nodes, or None when the graph is a DAG."""
    white, grey, black = 0, 1, 2
    colour = {node: white for node in edges}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for dep in edges.get(node, []):
            if colour.get(dep) == grey:
                return stack[stack.index(dep):] + [dep]
            if colour.get(dep) == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in edges:
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def topological_order(edges: dict[str, list[str]]) -> list[str]:
    """Nodes so that each comes after everything it depends on; ties keep the input order."""
    done: set[str] = set()
    order: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for dep in edges.get(node, []):
            visit(dep)
        order.append(node)

    for node in edges:
        visit(node)
    return order


def graph_problems(subtasks: Sequence[Node]) -> list[str]:
    """What makes a sub-task graph unusable: repeated ids, dependencies on unknown ids, cycles."""
    problems: list[str] = []
    ids = [s.id for s in subtasks]
    dup_ids = sorted({i for i in ids if ids.count(i) > 1})
    if dup_ids:
        problems.append(f"duplicate sub-task ids: {dup_ids}")
    known = set(ids)
    for sub in subtasks:
        missing = [d for d in sub.depends_on if d not in known]
        if missing:
            problems.append(f"sub-task {sub.id!r} depends on unknown sub-tasks {missing}")
    cycle = dependency_cycle({s.id: [d for d in s.depends_on if d in known] for s in subtasks})
    if cycle:
        problems.append(f"dependency cycle: {' -> '.join(cycle)}")
    return problems


def structural_problems(arena: Arena) -> list[str]:
    problems: list[str] = []
    tool_names = [t.name for t in arena.tools]
    duplicates = sorted({n for n in tool_names if tool_names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate tool names: {duplicates}")
    validators = {}
    for tool in arena.tools:
        try:
            validators[tool.name] = compile_validator(tool.input_schema)
        except SchemaError as exc:
            problems.append(f"tool {tool.name!r}: inputSchema does not compile: {exc}")
    if not arena.subtasks and arena.kind == "arena":  # emulators and upstreams serve tools with no questions
        problems.append("no sub-tasks")
    problems += graph_problems(arena.subtasks)
    for sub in arena.subtasks:
        if sub.gold_call is None:
            continue
        if sub.gold_call.tool not in validators:
            if sub.gold_call.tool not in tool_names:
                problems.append(f"sub-task {sub.id!r}: gold call names unknown tool {sub.gold_call.tool!r}")
            continue
        error = validators[sub.gold_call.tool].first_error(sub.gold_call.arguments)
        if error:
            problems.append(f"sub-task {sub.id!r}: gold arguments do not match the schema: {error}")
    for i, turn in enumerate(arena.turns):
        if unknown := sorted(set(turn.add_tools) - set(tool_names)):
            problems.append(f"turn {i}: adds unknown tools {unknown}")
        if i == 0 and turn.add_tools:
            problems.append("turn 0 adds tools: a tool offered from the start is simply one of the arena's tools")
    if (arena.kind == "suite") != (arena.suite is not None):
        problems.append("an arena of kind 'suite' names its suite, and only such an arena does")
    if arena.kind == "arena" and arena.subtasks and not any(s.gold_call for s in arena.subtasks):
        problems.append("no sub-task has a gold call: nothing to score")
    return problems
