"""Data flows one way: a module imports only modules earlier in the pipeline (read with ast)."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioner"

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


def _ranks() -> dict[str, int]:
    """The import-rank table of docs/DESIGN.md (its one home): `| rank | `a.py`, `b/` | ... |` rows."""
    ranks = {"captioner": 0}
    for line in DESIGN.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([\w/]+?)(?:\.py|/)`", cells[1]):
                ranks[name] = int(cells[0])
    return ranks


# Earlier stages have lower ranks; a module may import only strictly lower ranks, rank 0 included (it imports none).
RANKS = _ranks()


# Sub-packages, whose modules are ranked one by one (`data/vocab.py`); a package's `__init__` has a rank of its own.
BY_MODULE = {"data", "models", "generation", "evaluation", "serving", "tasks", "cli"}


def _key(parts: list[str]) -> str:
    """The rank-table name of a module from its parts under captioner/: `cli`, `tasks/base`, `data/vocab`, `data`."""
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts:
        return "captioner"
    if parts[0] in BY_MODULE and len(parts) >= 2:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def _module_name(path: Path) -> str:
    return _key(list(path.relative_to(PACKAGE).with_suffix("").parts))


def _imported(tree: ast.AST):
    """(rank-table name, line) of every captioner module a file imports; `from captioner.models import encoder`
    names the submodule."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("captioner"):
            parts = node.module.split(".")[1:]
            for alias in node.names:
                inner = [*parts, alias.name]
                is_module = PACKAGE.joinpath(*inner).with_suffix(".py").is_file() or PACKAGE.joinpath(*inner).is_dir()
                yield _key(inner if is_module else parts), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("captioner"):
                    yield _key(alias.name.split(".")[1:]), node.lineno


def test_every_module_has_a_rank():
    names = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert names <= set(RANKS), names - set(RANKS)


def _violations(name: str, source: str) -> list[str]:
    """Each import in `source` (the text of module `name`) of a module whose rank is not strictly lower."""
    return [
        f"{line}: {name} (rank {RANKS[name]}) imports {target} (rank {RANKS[target]})"
        for target, line in _imported(ast.parse(source))
        if RANKS[target] >= RANKS[name]
    ]


def test_imports_point_back_up_the_pipeline():
    violations = [
        f"{path.relative_to(PACKAGE)}:{v}"
        for path in PACKAGE.rglob("*.py")
        for v in _violations(_module_name(path), path.read_text())
    ]
    assert not violations, violations


def test_the_rank_check_sees_an_arrow_that_runs_up():
    """What the check above must refuse: a rank-0 module importing another (the gap that once let
    `generation/self_critical.py`, since folded into `scst.py`, import `evaluation/cider.py` unseen), a module
    importing one of its own rank or a later stage."""
    assert len(_violations("config", "from captioner import backend\n")) == 1
    assert len(_violations("generation/decoding", "from captioner.evaluation.evaluate import evaluate\n")) == 1
    assert len(_violations("data/vocab", "import captioner.cli\nfrom captioner.errors import CaptionerError\n")) == 1
    assert len(_violations("tasks/base", "from captioner.tasks import caption\n")) == 1
    assert _violations("tasks/caption", "from captioner.tasks import base\nfrom captioner.cider import CiderD\n") == []


def test_no_pickle_anywhere_but_the_restricted_pth_reader():
    """The project never writes or loads a pickle. The one exception reads PyTorch `.pth` weights (a pickle format):
    `torchfile.py` may use only an `Unpickler` subclass that overrides `find_class`, never
    `pickle.load(s)`/`dump(s)`."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imports_pickle = any(
            (isinstance(node, ast.Import) and any(a.name == "pickle" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and node.module == "pickle")
            for node in ast.walk(tree)
        )
        if path.name != "torchfile.py":
            assert not imports_pickle, path
            continue
        calls = {
            f"{n.value.id}.{n.attr}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
        }
        assert not calls & {"pickle.load", "pickle.loads", "pickle.dump", "pickle.dumps", "pickle.Pickler"}, calls
        unpicklers = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler" for b in n.bases)
        ]
        assert unpicklers and all(
            any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in c.body) for c in unpicklers
        )


def test_only_the_input_pipeline_and_the_backend_helper_import_a_backend():
    """Model code, generation and answering are `keras.ops`: TensorFlow is imported by the tf.data pipeline
    (which feeds every backend), `backend.py` (compiling, devices), `distribute.py` (MirroredStrategy) and `export.py`
    (the SavedModel); JAX only by `backend.py` and `distribute.py` (`jax.distributed`)."""
    allowed = {
        "tensorflow": {"data/preprocessing", "backend", "distribute", "serving/export"},
        "jax": {"backend", "distribute"},
    }
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for name in names:
                root = name.split(".")[0]
                if root in allowed and _module_name(path) not in allowed[root]:
                    found.append(f"{path.name}:{node.lineno} imports {name}")
    assert not found, found
