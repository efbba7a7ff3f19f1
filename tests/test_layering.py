"""The module boundaries the architecture promises: torch only under render/, ray only under engine/."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdbatch"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(*exclude: str):
    for path in PACKAGE.rglob("*.py"):
        if not any(part in exclude for part in path.relative_to(PACKAGE).parts):
            yield path


def test_ray_is_imported_only_under_engine():
    offenders = [p.name for p in _modules("engine") if "ray" in _imports(p)]
    assert offenders == []


def test_torch_and_diffusers_only_under_render():
    heavy = {"torch", "diffusers", "transformers"}
    offenders = [p.name for p in _modules("render", "engine") if heavy & _imports(p)]
    assert offenders == []
    engine = [p.name for p in (PACKAGE / "engine").glob("*.py") if heavy & _imports(p)]
    assert engine == []


def test_render_never_imports_ray():
    assert [p.name for p in (PACKAGE / "render").glob("*.py") if "ray" in _imports(p)] == []


def test_planning_imports_nothing_heavy():
    assert _imports(PACKAGE / "plan.py") <= {"__future__", "dataclasses", "typing", "pyarrow"}
