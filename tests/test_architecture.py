"""The arrows of the design (docs/design.md), checked on the source: layers import downwards
only, no import cycles, no private name imported across modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mechanisms", "service", "loadtest")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            if "/gen/" in str(p):
                continue
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for the module's imports, relative ones resolved.
    Imports inside functions count too (a lazy import is still an arrow between layers), except
    with top_level_only: what runs when the module is loaded, which is what a cycle is made of."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    tree = ast.parse(path.read_text())
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            out.append((mod, [a.name for a in node.names]))
    return out


def internal(mod: str, known: dict[str, Path]) -> str | None:
    while mod and mod not in known:
        mod = mod.rpartition(".")[0]
    return mod or None


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    known = modules()
    g: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for mod, names in imports(name, path, top_level_only):
            for target in [f"{mod}.{n}" for n in names] + [mod]:
                t = internal(target, known)
                if t and t != name:
                    g[name].add(t)
                    break
    return g


def test_layers_import_downwards_only():
    g = graph()
    bad = []
    for src, targets in g.items():
        for t in targets:
            if src.startswith("mechanisms") and not t.startswith("mechanisms"):
                bad.append(f"{src} -> {t} (mechanisms is pure math)")
            if t == "service.cli" and src != "service.cli":
                bad.append(f"{src} -> {t} (nothing imports the CLI)")
            if src.startswith("service.api") and t in ("service.engine.transformers_backend", "service.engine.vllm_backend"):
                bad.append(f"{src} -> {t} (the API never imports an engine backend)")
            if src.startswith(("service.engine", "service.store")) and t.startswith(("service.jobs", "service.api")):
                bad.append(f"{src} -> {t} (engines and stores sit below jobs and the API)")
            if src.startswith("service.generation") and t.startswith(("service.jobs", "service.api", "service.store")):
                bad.append(f"{src} -> {t} (generation sits below jobs, the API and the store)")
            if src.startswith("service.jobs") and t.startswith("service.api"):
                bad.append(f"{src} -> {t} (jobs sit below the API)")
    assert bad == []


def test_no_import_cycles():
    g = graph(top_level_only=True)
    cycles, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{n} -> {t}")
            elif t not in state:
                visit(t, [*stack, t])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_no_private_name_is_imported_across_modules():
    known = modules()
    bad = [f"{name}: from {mod} import {n}" for name, path in known.items() for mod, names in imports(name, path)
           for n in names if n.startswith("_") and not n.startswith("__") and internal(mod, known)]
    assert bad == []
