"""Imports run one way: no cycle between modules, and no module imports from a layer above its own.

Every import counts, at the top of a module and inside a function (a function-level import is still a dependency;
it only hides it). The layers, lowest first, are drawn in docs/architecture.md; a new module must belong to one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "t2i"

# Lowest first. A module may import from its own layer and the ones before it. A prefix covers a package and
# everything under it ("t2i.data" is t2i/data/*.py); "t2i" is the package's own __init__ only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # what everything else stands on: the registries, recipes, device/precision, weights files, drawing helpers
    ("core", ("t2i", "t2i.registry", "t2i.recipe", "t2i.runtime", "t2i.weights", "t2i.legacy", "t2i.viz")),
    # the records that travel through the pipeline, and the data sets and loaders that make them
    ("data", ("t2i.batch", "t2i.data")),
    # one component family each: networks, refiners, encoders, losses, kernels
    ("components", ("t2i.models", "t2i.refiners", "t2i.encoders", "t2i.losses", "t2i.ops")),
    # evaluation protocols, the loop that feeds them generated images, and the statistics of their results
    ("metrics", ("t2i.metrics", "t2i.stats")),
    # building a recipe's networks, the training loops, run folders, checkpoints, run setup
    ("train", ("t2i.networks", "t2i.train")),
    # what drives training and evaluation for a command: checkpoint evaluation, comparisons, ablations, benchmarks
    (
        "tools",
        ("t2i.evaluate", "t2i.evaluate_images", "t2i.compare", "t2i.ablate", "t2i.bench", "t2i.curves", "t2i.report"),
    ),
    ("cli", ("t2i.cli", "t2i.__main__")),
]

# (importer, imported) pairs allowed to go against the layers, each with its reason. Empty, and meant to stay so.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The t2i module that ``name`` (a module, or a module plus an attribute) refers to."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every t2i module ``name`` imports, anywhere in its file (top level, functions, ``TYPE_CHECKING`` blocks)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, known) for alias in node.names if alias.name.split(".")[0] == "t2i")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, ``level - 1`` steps up
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != "t2i":
                continue
            for alias in node.names:  # ``from t2i import recipe`` imports the module t2i.recipe
                found.add(_resolve(f"{source}.{alias.name}", known))
    found.discard(None)
    found.discard(name)
    return {m for m in found if m is not None}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer_of(module: str) -> int | None:
    """Index of the layer whose longest matching prefix covers ``module`` (``t2i`` itself covers only itself)."""
    best, best_len = None, -1
    for index, (_layer, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != "t2i" and module.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        low, high = layer_of(importer), layer_of(imported)
        if low is None or high is None or high <= low or (importer, imported) in ALLOWED_UPWARD:
            continue
        problems.append(f"{importer} ({LAYERS[low][0]}) imports {imported} ({LAYERS[high][0]})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# -- the project itself ------------------------------------------------------------------------------------------------
def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"add these modules to a layer in LAYERS and docs/architecture.md: {unplaced}"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (top-level or function-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_no_import_runs_up_a_layer():
    problems = upward_imports(import_graph())
    assert not problems, "imports from a higher layer:\n" + "\n".join(problems)


def test_allow_list_entries_are_still_needed():
    graph = import_graph()
    stale = [pair for pair in ALLOWED_UPWARD if pair[1] not in graph.get(pair[0], set())]
    assert not stale, f"allowed upward imports that no longer exist: {stale}"


# -- the checker finds what it is meant to find ------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    known = {}
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = list(Path(relative).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        known[".".join(parts)] = path
    return known


def test_function_level_imports_and_relative_imports_are_seen(tmp_path):
    known = _write(
        tmp_path,
        {
            "t2i/__init__.py": "",
            "t2i/train/__init__.py": "",
            "t2i/train/loop.py": "def f():\n    from t2i.evaluate import evaluate_trainer\n",
            "t2i/train/samples.py": "from .loop import text_features\nfrom . import ema\n",
            "t2i/train/ema.py": "",
            "t2i/evaluate.py": "import t2i.train.loop\n",
        },
    )
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert graph["t2i.train.loop"] == {"t2i.evaluate"}
    assert graph["t2i.train.samples"] == {"t2i.train.loop", "t2i.train.ema"}
    assert cycles(graph) == [["t2i.evaluate", "t2i.train.loop"]]
    assert upward_imports(graph) == ["t2i.train.loop (train) imports t2i.evaluate (tools)"]


@pytest.mark.parametrize(
    ("module", "layer"),
    [("t2i", "core"), ("t2i.data.loader", "data"), ("t2i.ops.attention", "components"), ("t2i.cli.train", "cli")],
)
def test_layers_are_found_by_longest_prefix(module, layer):
    assert LAYERS[layer_of(module)][0] == layer


def test_a_module_outside_every_layer_is_not_placed():
    assert layer_of("t2i.somewhere_new") is None
