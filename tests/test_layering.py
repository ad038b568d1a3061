"""The import layering: the reference model is torch-only at import time, and the import contracts bite.

import-linter (the contracts in pyproject.toml, run by .ci/run) sees every import, wherever it stands, so
it cannot say that `nanogpt/model.py` imports the Hugging Face converter only inside
`GPT.from_pretrained`. The module-level rule is checked here by reading the file's syntax tree, and by
importing the model in a fresh interpreter. The contracts themselves are proven to fail on a copy of the
packages with one upward import added, so a contract that checks nothing cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "nanogpt" / "model.py"
# What the reference model may import at module level, beside the standard library.
ALLOWED_THIRD_PARTY = {"torch"}
# The packages import-linter analyses (pyproject.toml's root_packages) and the contracts' file.
LINTED = ("parity", "nanogpt", "benchmarks", "pyproject.toml")
LAYERS_CONTRACT = "parity's rooms are layered along the data flow"
# core is the lowest room; frontends the highest.
UPWARD_IMPORT = ("parity/core/verdicts.py", "import parity.frontends.report\n")


def module_level_imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of each import that runs when the module is imported (not in a function)."""
    found: list[tuple[int, str]] = []
    pending: list[ast.AST] = [ast.parse(source)]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue  # runs when called, not when imported
            if isinstance(child, ast.Import):
                found += [(child.lineno, alias.name.split(".")[0]) for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                found.append((child.lineno, "." * child.level + (child.module or "").split(".")[0]))
            else:
                pending.append(child)
    return sorted(found)


def disallowed(imports: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The imports that are neither the standard library, `__future__` nor torch."""
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"__future__"}
    return [(line, name) for line, name in imports if name not in allowed]


def test_the_reference_model_imports_only_torch_and_the_stdlib_at_module_level() -> None:
    imports = module_level_imports(MODEL.read_text())
    assert "torch" in {name for _, name in imports}, "the syntax-tree walk found no import at all"
    assert disallowed(imports) == [], (
        f"nanogpt/model.py, module-level imports (line, package): {disallowed(imports)}"
    )


def test_the_module_level_walk_tells_a_top_level_import_from_one_in_a_function() -> None:
    source = (
        "from __future__ import annotations\nimport math\nimport torch\nimport transformers\n"
        "from nanogpt.hf import load_gpt\nfrom . import sibling\n"
        "if True:\n    import numpy\n"
        "class A:\n    import safetensors\n    def f(self):\n        import tiktoken\n"
        "def g():\n    from nanogpt import hf\n"
    )
    expected = [(4, "transformers"), (5, "nanogpt"), (6, "."), (8, "numpy"), (10, "safetensors")]
    assert disallowed(module_level_imports(source)) == expected


def test_importing_the_reference_model_loads_neither_transformers_nor_the_converter() -> None:
    probe = (
        "import sys, nanogpt.model; "
        "print(sorted(m for m in sys.modules if m.startswith(('transformers', 'nanogpt.hf', 'parity'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the packages under root, importing them from there (not from this checkout)."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [exe, "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def linted_copy(tmp_path: Path) -> Path:
    """A copy of the linted packages and pyproject.toml, to break without touching the checkout."""
    if not (shutil.which("lint-imports") or Path(sys.executable).with_name("lint-imports").exists()):
        pytest.skip("lint-imports is not installed (pip install -e '.[test]' installs import-linter)")
    for name in LINTED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, tmp_path / name)
    return tmp_path


def test_the_import_contracts_pass_on_the_unmodified_packages(linted_copy: Path) -> None:
    out = _lint_imports(linted_copy)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


def test_an_upward_import_breaks_the_layers_contract(linted_copy: Path) -> None:
    path, line = UPWARD_IMPORT
    target = linted_copy / path
    target.write_text(target.read_text() + line)
    out = _lint_imports(linted_copy)
    assert out.returncode != 0, out.stdout + out.stderr
    assert f"{LAYERS_CONTRACT} BROKEN" in out.stdout, out.stdout
    assert "parity.core.verdicts -> parity.frontends.report" in out.stdout, out.stdout
