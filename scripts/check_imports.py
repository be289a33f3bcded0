"""Checks that the project's dependencies point one way: codec ← streaming ← call ← client,
benchmarks; and call.wire ← server.py, which must never load torch.

    python scripts/check_imports.py      # prints each violation, exits 1 if there is any

It reads the source (``ast``), so it also sees imports inside functions, which a run would only
meet on the code path that takes them. ``tests/test_layout.py`` runs it in the suite.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("codec", "streaming", "call")
TOP_LEVEL = ("server", "client", "demo")

FORBIDDEN = {
    "codec": {"streaming", "call", "client", "server", "benchmarks", "training"},
    "streaming": {"call", "client", "server", "benchmarks", "training"},
    "call": {"client", "server", "benchmarks", "training"},
}
"""Top-level modules that no module of a package may import."""

TORCH_FREE = ("server", "call.wire", "call.rooms", "call.relay_cluster", "call.relay_log", "call.relay_metrics",
              "call.relay_workers", "call.relay_link", "call.relay_picows")
"""Modules whose whole import closure (within the project) must not reach torch."""
TORCH_DEPENDENT = {"torch", "codec", "streaming", "transformers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules = {name: ROOT / f"{name}.py" for name in TOP_LEVEL}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from call import wire`
    return found


def violations() -> list[str]:
    modules = project_modules()
    graph = {name: imports_of(name, path) for name, path in modules.items()}
    problems = []
    for name, imported in graph.items():
        rules = FORBIDDEN.get(name.split(".")[0], set())
        for target in sorted(imported):
            if target.split(".")[0] in rules:
                problems.append(f"{name} imports {target}: {name.split('.')[0]} must not depend on {target.split('.')[0]}")
    for root in TORCH_FREE:
        seen, todo = set(), [root]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            parents = [name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)]  # run their __init__
            for target in [*graph.get(name, ()), *parents]:
                if target.split(".")[0] in TORCH_DEPENDENT:
                    problems.append(f"{root} reaches {target} through {name}: it must run without torch")
                elif target in modules:
                    todo.append(target)
    return problems


def main() -> int:
    problems = violations()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"imports point one way ({len(project_modules())} modules checked)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
