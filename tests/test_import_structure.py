"""The package's imports run one way: each module imports only modules of lower layers, nothing
imports in a cycle, and no function hides a package import from module level."""
import ast
from pathlib import Path

import nnunet_export

PACKAGE_DIR = Path(nnunet_export.__file__).resolve().parent

# Lowest first. A module may import modules of its own layer or of lower layers only; `__init__`
# (the public surface) sits above everything.
LAYERS = [
    ["_core", "_torch_abi"],
    ["atomic_write", "prefixes", "folds", "checkpoint", "digests", "metadata", "image_files", "case_files"],
    ["model_config"],
    ["architectures"],
    ["export_writer", "onnx_format"],
    ["model_info"],
    ["pipeline"],
    ["model"],
    ["loading"],
    ["export", "onnx_export", "triton", "predict"],
    ["testing"],
    ["cli", "nnunet_patch", "pytest_plugin", "__main__"],
]


def _module_name(package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Package-relative names (``"loading"``, ``"architectures.build"``) a from-import reaches."""
    if node.level == 0:
        if not (node.module or "").startswith("nnunet_export"):
            return []
        base = (node.module or "").split(".")[1:]
    else:
        here = module.split(".") if module else []
        if not is_package:
            here = here[:-1]
        base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    if node.module is None:  # `from . import x`: x may be a submodule
        return [".".join(base + [alias.name]) for alias in node.names]
    return [".".join(base)]


def _imports(package_dir: Path, path: Path):
    """Yields (package-relative module imported, at module level?) for every package import."""
    module = _module_name(package_dir, path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(module, path.name == "__init__.py", node)
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("nnunet_export.")]
        else:
            continue
        for target in targets:
            yield target, id(node) in top_level


def _graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> package modules it imports; the package itself ("") only re-exports, so it is
    left out as a source and as a target."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        module = _module_name(package_dir, path)
        if module:
            graph[module] = {t for t, _ in _imports(package_dir, path) if t and t != module}
    return graph


def _layer_of(module: str) -> int:
    head = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if head in layer:
            return index
    raise AssertionError(f"nnunet_export.{module} is in no layer of LAYERS: place it there")


def hidden_imports(package_dir: Path) -> list[str]:
    return [
        f"{path.relative_to(package_dir)} imports nnunet_export.{target} inside a function"
        for path in sorted(package_dir.rglob("*.py"))
        for target, top in _imports(package_dir, path)
        if not top
    ]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (layer {_layer_of(module)}) imports {target} (layer {_layer_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return []

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node, [])
            if found:
                return found
    return []


def test_no_function_level_package_imports():
    assert hidden_imports(PACKAGE_DIR) == []


def test_imports_run_from_higher_to_lower_layers():
    assert upward_imports(_graph(PACKAGE_DIR)) == []


def test_no_import_cycle():
    assert find_cycle(_graph(PACKAGE_DIR)) == []


def test_the_checks_catch_a_cycle_an_upward_and_a_hidden_import(tmp_path):
    # The checks above must be able to fail: the same code on a small package that has all three.
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "loading.py").write_text("from .export import to_torchscript\n")
    (tmp_path / "export.py").write_text("from .loading import load_complete\n")
    (tmp_path / "folds.py").write_text("def f():\n    from .model import NnUNetModel\n")
    (tmp_path / "model.py").write_text("")
    graph = _graph(tmp_path)
    assert find_cycle(graph) == ["export", "loading", "export"]
    assert upward_imports(graph) == ["folds (layer 1) imports model (layer 7)",
                                     "loading (layer 8) imports export (layer 9)"]
    assert hidden_imports(tmp_path) == ["folds.py imports nnunet_export.model inside a function"]

