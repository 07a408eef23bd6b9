"""Data flows one way: a module imports only modules earlier in the pipeline (read with ast)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioner"

# Earlier stages have lower ranks; a module may import only strictly lower ranks (utilities are rank 0).
RANKS = {
    "captioner": 0, "errors": 0, "fileio": 0, "config": 0,
    "datasets": 1, "vocab": 2, "images": 3, "preprocessing": 4,
    "encoder": 5, "decoder": 6, "models": 7, "run": 8, "train": 9,
    "decoding": 10, "answering": 10, "features": 6, "metrics": 10, "vqa": 6, "evaluate": 11, "cli": 12, "attention": 5, "viz": 0, "precision": 0,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else "captioner"


def _imported(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("captioner"):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("captioner"):
                    yield alias.name, node.lineno


def test_every_module_has_a_rank():
    names = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert names <= set(RANKS), names - set(RANKS)


def test_imports_point_back_up_the_pipeline():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for module, line in _imported(ast.parse(path.read_text())):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "captioner"
            same_package = target == name and name == "datasets"
            if not same_package and RANKS[target] >= RANKS[name] and RANKS[target] != 0:
                violations.append(f"{path.name}:{line} imports {module}")
    assert not violations, violations


def test_no_pickle_anywhere():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(alias.name != "pickle" for alias in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert node.module != "pickle", path
