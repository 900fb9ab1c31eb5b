"""The flow of the code: a module imports only modules of its own step or of the steps before it.

The steps follow the data (files -> data set -> plan -> trained model -> predictions -> numbers and pictures); the
command-line tool and the Python API (the package root) sit on top. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vesalius

#: The steps, in the order data flows through them; a module may import its own step and every step before it.
STEPS: list[tuple[str, ...]] = [
    ("errors",),
    ("io",),
    ("workspace", "precision", "metrics", "outputs", "units"),
    ("data",),
    ("planning",),
    ("model_package",),
    ("preprocessing",),
    ("augmentation",),
    ("models",),
    ("training",),
    ("inference",),
    ("evaluation",),
    ("pacs",),
    ("runtime",),
    ("deploy",),
    ("serving",),
    ("reporting",),
    ("viewer",),
    ("demo",),
    ("cli", "__main__", "__init__"),
]
ROOT = Path(vesalius.__file__).parent


def _step(module: str) -> int:
    """The step of ``vesalius.X...`` (by its first component; the package root is the API, at the top)."""
    first = module.split(".")[1] if "." in module else "__init__"
    first = first.removesuffix(".py")
    for index, names in enumerate(STEPS):
        if first in names:
            return index
    raise AssertionError(f"{module}: not placed in STEPS")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "vesalius" else [f"vesalius.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("vesalius")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vesalius")]
    return found


def test_every_module_has_a_step() -> None:
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT).with_suffix("")
        module = ".".join(("vesalius", *relative.parts)) if relative.parts != ("__init__",) else "vesalius"
        _step(module)


def test_no_import_points_up_the_flow() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        module = ".".join(("vesalius", *relative.parts)) if relative.parts != ("__init__",) else "vesalius"
        own = _step(module)
        for line, imported in _imports(path):
            if _step(imported) > own:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} imports {imported}")
    assert upward == []


def test_only_the_planning_package_reads_plan_json_by_key() -> None:
    """Everything after planning takes typed plans and trained configurations, never the raw plan dict."""
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{n}"
        for path in sorted(ROOT.rglob("*.py"))
        if path.parent.name != "planning"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if 'plan["' in line
    ]
    assert offenders == []


def test_only_the_model_package_knows_the_run_folder_files() -> None:
    """The run folder's file names appear in :mod:`vesalius.model_package` alone (docstrings aside)."""
    names = re.compile(
        r'"(training|model|postprocessing)\.json"|"checkpoint_(final|best|latest|\{)|checkpoint_\w+\.pt"'
    )
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{n}"
        for path in sorted(ROOT.rglob("*.py"))
        if path.name != "model_package.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if names.search(line)
    ]
    assert offenders == []
