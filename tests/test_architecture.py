"""The package's shape: imports go one way (no cycles), and scoring an image loads no training code."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rd2t"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every rd2t module -> the rd2t modules it imports (at any depth of the file, lazy ones too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                t = t.strip(".")
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a package's __init__ re-exporting its own modules is not a cycle of the layers
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles_in_the_package():
    graph = _import_graph()
    assert len(graph) > 30 and graph["rd2t.cli"], "the graph was read"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


LAYERS = [
    "errors",
    "files",
    "calibration",
    "config",
    "model",
    "data",
    "training",
    "inference",
    "evaluation",
    "report",
    "api",
    "cli",
    "service",
    "runners",
]


@pytest.mark.parametrize(
    "lower,upper",
    [
        ("inference", "training"),
        ("model", "inference"),
        ("inference", "evaluation"),
        ("evaluation", "training"),
        ("model", "training"),
        ("data", "model"),
    ],
)
def test_lower_layers_never_import_upper_ones(lower, upper):
    graph = _import_graph()
    bad = [
        (m, n)
        for m, deps in graph.items()
        if m.startswith(f"rd2t.{lower}")
        for n in deps
        if n.startswith(f"rd2t.{upper}")
    ]
    assert not bad, bad


def test_predict_loads_no_training_sklearn_or_scipy(tmp_path, trained_cli_model, texture_set):
    code = (
        "import sys, json\n"
        "from rd2t.cli import main\n"
        f"rc = main(['predict', {str(trained_cli_model)!r}, {str(texture_set / 'test/good')!r}, "
        f"'--out', {str(tmp_path / 'o')!r}])\n"
        "heavy = ('rd2t.training', 'sklearn', 'scipy', 'rd2t.evaluation')\n"
        "mods = [m for m in sys.modules if m.startswith(heavy)]\n"
        "print(json.dumps({'rc': rc, 'mods': mods}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and len(list((tmp_path / "o").glob("*_heatmap.png"))) == 6
    assert result["mods"] == []
