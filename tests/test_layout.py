"""The package's three floors (issue 24): the optimizer at the top of ``torch_lstm_optim/``, the meta-training workshop
in ``meta/``, evaluation in ``evaluation/``; imports run one way and in no circle, and importing the optimizer stays
light.

The import graph is read from the source with ``ast`` (every ``import`` statement, at module level or inside a
function), so a lazy import counts like any other. ``python tests/test_layout.py`` prints it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "torch_lstm_optim"
PRODUCT = {"torch_lstm_optim", "torch_lstm_optim.network", "torch_lstm_optim.optimizer", "torch_lstm_optim.weights",
           "torch_lstm_optim.hub"}
# `python -m torch_lstm_optim.X` kept at their documented names: they run the workshop, nothing imports them.
ENTRY_POINTS = {"torch_lstm_optim.meta_train", "torch_lstm_optim.evaluate", "torch_lstm_optim.compare",
                "torch_lstm_optim.reproduce"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` counts as ``a.b`` where that is a module)."""
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def show(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{name} -> {', '.join(sorted(targets)) or '(nothing of the package)'}"
                     for name, targets in sorted(graph.items()))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or ``None``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}; the graph:\n{show(graph)}"


def test_imports_run_one_way_between_the_floors() -> None:
    graph = import_graph()
    assert PRODUCT | ENTRY_POINTS <= set(graph), f"a module of the layout is missing; the graph:\n{show(graph)}"
    wrong = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            floor = target.split(".")[1] if target.count(".") else ""
            if name in PRODUCT and (floor in ("meta", "evaluation") or target in ENTRY_POINTS):
                wrong.append(f"{name} -> {target}: the optimizer imports nothing of the workshop")
            elif name.startswith("torch_lstm_optim.meta.") and floor == "evaluation":
                wrong.append(f"{name} -> {target}: meta-training does not import evaluation")
            elif target in ENTRY_POINTS:
                wrong.append(f"{name} -> {target}: a command's entry module is imported by nothing")
    network = graph["torch_lstm_optim.network"]
    wrong += [f"torch_lstm_optim.network -> {t}: the network knows nothing of loading" for t in sorted(network)
              if t in ("torch_lstm_optim.weights", "torch_lstm_optim.hub")]
    assert not wrong, "\n".join(wrong) + f"\nthe graph:\n{show(graph)}"


def test_importing_the_optimizer_loads_neither_torchvision_nor_the_workshop() -> None:
    script = (
        "import json, sys, torch\n"
        "import torch_lstm_optim\n"
        "param = torch.nn.Parameter(torch.ones(3))\n"
        "optimizer = torch_lstm_optim.LSTMOptimizer([param])\n"
        "param.square().sum().backward()\n"
        "optimizer.step()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [name for name in loaded if name.split(".")[0] in ("torchvision", "matplotlib", "sklearn")
             or name.startswith(("torch_lstm_optim.meta", "torch_lstm_optim.evaluation"))
             or name in ENTRY_POINTS]
    assert heavy == [], f"importing and stepping the optimizer loaded {heavy}"


if __name__ == "__main__":
    print(show(import_graph()))
