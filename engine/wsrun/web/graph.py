"""Pictures: a life-cycle's state machine and a recipe's steps, as DOT or Mermaid.

``wsrun graph RECIPE`` and ``wsrun graph --lifecycle FILE`` print them; the web
application renders the DOT to SVG with Graphviz's ``dot`` (Debian package
``graphviz``).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.recipe import Recipe, is_recipe_ref

SECTIONS = ("steps", "on_failure", "finally")
_STEP_REF = re.compile(r"steps\.([A-Za-z_][A-Za-z0-9_-]*)")


class GraphvizMissing(Exception):
    """``dot`` is not installed (Debian: apt-get install graphviz)."""


@dataclass
class Node:
    id: str
    label: str
    shape: str = "box"
    dashed: bool = False


@dataclass
class Edge:
    tail: str
    head: str
    label: str = ""
    dotted: bool = False


@dataclass
class Graph:
    """A directed graph with optional clusters (a recipe's sections)."""

    name: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    clusters: dict[str, list[str]] = field(default_factory=dict)


def lifecycle_graph(lifecycle: Any) -> Graph:
    """The state machine of a ``wsrun.stores.state.Lifecycle`` (or anything with its
    ``kind``, ``states``, ``initial`` and ``transitions``)."""
    graph = Graph(f"lifecycle {lifecycle.kind}")
    graph.nodes.append(Node("__start", "", shape="point"))
    states = list(lifecycle.states)
    for state in states:
        graph.nodes.append(Node(state, state, shape="ellipse"))
    if lifecycle.initial:
        graph.edges.append(Edge("__start", lifecycle.initial))
    any_used = False
    for t in lifecycle.transitions:
        sources, target = t["from"], t["to"]
        label = str(t.get("description") or "")
        if sources == "*" or sources == ["*"]:
            any_used = True
            graph.edges.append(Edge("__any", target, label, dotted=True))
            continue
        for source in [sources] if isinstance(sources, str) else sources:
            graph.edges.append(Edge(source, target, label))
    if any_used:
        graph.nodes.append(Node("__any", "any state", shape="plaintext"))
    return graph


def recipe_graph(recipe: Recipe) -> Graph:
    """A recipe's steps in order, per section, with data dependencies dotted."""
    graph = Graph(f"recipe {recipe.name}")
    on = recipe.data.get("on")
    previous = None
    if on:
        graph.nodes.append(Node("__on", "on: " + _trigger(on), shape="ellipse"))
        previous = "__on"
    known: dict[str, str] = {}
    for section in SECTIONS:
        steps = recipe.step_list(section)
        if not steps:
            continue
        members = graph.clusters.setdefault(section, [])
        chain_start = previous if section == "steps" else None
        for index, step, group in _with_group_steps(steps):
            if not isinstance(step, dict):
                continue
            node_id = f"{section}_{index}"
            sid = str(step.get("id") or "")
            uses = str(step.get("uses") or ("group (all or nothing)" if "group" in step else "?"))
            label = f"{sid or f'#{index}'}\n{uses}"
            if group:
                label += f"\n(in {group})"
            if step.get("for_each") is not None:
                label += "\n(for each)"
            shape = "component" if is_recipe_ref(uses) else "box"
            graph.nodes.append(Node(node_id, label, shape=shape, dashed="if" in step))
            members.append(node_id)
            if chain_start is not None:
                graph.edges.append(Edge(chain_start, node_id, "if" if "if" in step else ""))
            chain_start = node_id
            for ref in sorted(set(_STEP_REF.findall(str(step.get("with", ""))))):
                if ref in known and known[ref] != chain_start:
                    graph.edges.append(Edge(known[ref], node_id, dotted=True))
            if sid:
                known[sid] = node_id
        if section == "steps":
            previous = chain_start
    return graph


def _with_group_steps(steps: list[Any]) -> list[tuple[str, Any, str]]:
    """(node index, step, the id of the atomic group holding it or "") of each
    step, a group's steps right after the group."""
    out: list[tuple[str, Any, str]] = []
    for index, step in enumerate(steps, 1):
        out.append((str(index), step, ""))
        inner = step.get("steps") if isinstance(step, dict) and "group" in step else None
        for sub, inner_step in enumerate(inner if isinstance(inner, list) else [], 1):
            out.append((f"{index}_{sub}", inner_step, str(step.get("id") or f"#{index}")))
    return out


def _trigger(on: Any) -> str:
    if isinstance(on, dict):
        return ", ".join(f"{k} {v if isinstance(v, str) else _compact(v)}" for k, v in on.items())
    return str(on)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


# ---- output -----------------------------------------------------------------


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph) -> str:
    lines = [f"digraph {_dot_string(graph.name)} {{"]
    lines.append('  graph [fontname="Helvetica", fontsize=11];')
    lines.append('  node [fontname="Helvetica", fontsize=11, style="rounded"];')
    lines.append('  edge [fontname="Helvetica", fontsize=9];')
    clustered = {n for members in graph.clusters.values() for n in members}
    by_id = {n.id: n for n in graph.nodes}

    def node_line(n: Node, indent: str) -> str:
        style = "rounded,dashed" if n.dashed else ("rounded" if n.shape == "box" else "solid")
        return f"{indent}{_dot_string(n.id)} [label={_dot_string(n.label)}, shape={n.shape}, style={_dot_string(style)}];"

    for n in graph.nodes:
        if n.id not in clustered:
            lines.append(node_line(n, "  "))
    for section, members in graph.clusters.items():
        lines.append(f"  subgraph {_dot_string('cluster_' + section)} {{")
        lines.append(f"    label={_dot_string(section)}; style=dashed; color=grey;")
        lines.extend(node_line(by_id[m], "    ") for m in members)
        lines.append("  }")
    for e in graph.edges:
        attrs = []
        if e.label:
            attrs.append(f"label={_dot_string(e.label)}")
        if e.dotted:
            attrs.append('style=dotted, color="grey55", arrowsize=0.6, constraint=false')
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_dot_string(e.tail)} -> {_dot_string(e.head)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_id(node_id: str) -> str:
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", node_id)


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;").replace("\n", "<br/>") + '"'


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart TD"]
    clustered = {n for members in graph.clusters.values() for n in members}
    shapes = {
        "ellipse": ("([", "])"),
        "point": ("((", "))"),
        "component": ("[[", "]]"),
        "plaintext": (">", "]"),
    }

    def node_line(n: Node) -> str:
        left, right = shapes.get(n.shape, ("[", "]"))
        return f"{_mermaid_id(n.id)}{left}{_mermaid_label(n.label or ' ')}{right}"

    lines.extend("  " + node_line(n) for n in graph.nodes if n.id not in clustered)
    by_id = {n.id: n for n in graph.nodes}
    for section, members in graph.clusters.items():
        lines.append(f"  subgraph {section}")
        lines.extend("    " + node_line(by_id[m]) for m in members)
        lines.append("  end")
    for e in graph.edges:
        arrow = "-.->" if e.dotted else "-->"
        label = f"|{e.label}|" if e.label else ""
        lines.append(f"  {_mermaid_id(e.tail)} {arrow}{label} {_mermaid_id(e.head)}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=64)
def to_svg(dot: str) -> str:
    """SVG drawn by Graphviz's ``dot`` from DOT text."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("Graphviz's dot is not installed (apt-get install graphviz)")
    proc = subprocess.run(
        [exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"dot failed: {proc.stderr.strip()}")
    svg = proc.stdout
    return svg[svg.index("<svg") :] if "<svg" in svg else svg


def render(graph: Graph, fmt: str) -> str:
    """``graph`` as ``dot``, ``mermaid`` or ``svg`` text."""
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "mermaid":
        return to_mermaid(graph)
    if fmt == "svg":
        return to_svg(to_dot(graph))
    raise ValueError(f"unknown format {fmt!r} (dot, mermaid, svg)")
