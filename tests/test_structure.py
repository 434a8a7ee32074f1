"""Claims about the layout of the package, checked on its source: the engine knows no model,
and the method of a config is read in one place (`e2etal.pipelines`)."""

import ast
import re
from pathlib import Path

import e2etal
from e2etal.pipelines import METHODS

PACKAGE = Path(e2etal.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_engine_imports_no_model():
    model_packages = ("e2etal.adapters", "e2etal.heads", "e2etal.backbones", "e2etal.pipelines", "e2etal.detector")
    found = {f"{path.name}: {name}" for path in (PACKAGE / "engine").glob("*.py") for name in _imports(path)
             if name.startswith(model_packages)}
    assert not found


def test_only_the_pipeline_registry_branches_on_the_method():
    names = "|".join(METHODS + ("frozen",))
    pattern = re.compile(rf"""cfg\.method\s*(==|!=|in)\s*\(?["']({names})["']""")  # cfg, ckpt_cfg, ...
    found = [f"{path.relative_to(PACKAGE)}:{i}" for path in PACKAGE.rglob("*.py")
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found
