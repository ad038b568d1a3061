"""Implementations whose imports have side effects: only the imports the model needs run, offline.

A training script imports sibling modules that download at import (an evaluation set, a tokenizer) that
its model classes never use: definitions-only loading leaves those imports out. A package that imports
itself by absolute name gets its parent folder on the path while importing. The sandboxed child serves
`tiktoken.get_encoding("gpt2")` from the BPE files the project ships, so code that needs it gets it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bisect_fixtures.corpus import write_absolute_package

from parity.core.errors import ImplementationError
from parity.foreign.definitions import plan_definitions
from parity.foreign.impl import import_implementation

CORPUS_DIR = Path(__file__).parent / "bisect_fixtures" / "corpus"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _plan_notes(source: str) -> tuple[set[str], list[tuple[int, list[str]]]]:
    """(names the kept import statements bind, (line, names) of the imports left out)."""
    plan = plan_definitions(textwrap.dedent(source), "script.py")
    imports = [n for k in plan.kept for n in ast.walk(k) if isinstance(n, (ast.Import, ast.ImportFrom))]
    kept = {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}
    return kept, plan.unneeded_imports


def test_only_the_imports_the_definitions_read_are_kept() -> None:
    kept, left_out = _plan_notes(
        """\
        import math
        import numpy as np
        import torch.nn as nn
        from hellaswag import iterate_examples, render_example
        from model import GPT, GPTConfig
        from helpers import exported
        try:
            import wandb
        except ImportError:
            wandb = None
        try:
            import flash_attn
        except ImportError:
            flash_attn = None
        __all__ = ["exported"]

        def gelu(x):
            return 0.5 * x * (1 + math.tanh(x))

        class Block(nn.Module):
            fused = flash_attn is not None

        for example in iterate_examples("val"):
            render_example(example)
        np.save("x.npy", [])
        """
    )
    # math, nn and flash_attn are read by kept definitions; GPT and GPTConfig may be the model (class-like
    # names); `exported` is listed in __all__. numpy, hellaswag and wandb only serve the left-out code.
    assert {"math", "nn", "GPT", "GPTConfig", "exported", "flash_attn"} <= kept
    assert left_out == [(2, ["np"]), (4, ["iterate_examples", "render_example"]), (7, ["wandb"])]
    assert "np" not in kept and "render_example" not in kept and "wandb" not in kept


def test_an_unused_import_with_side_effects_never_runs(tmp_path: Path) -> None:
    (tmp_path / "sideeffect.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('imported.txt').write_text('ran')\n"
        "def helper():\n    return 1\n"
    )
    model = (CORPUS_DIR / "script_style.py").read_text()
    model = model.replace("import math\n", "import math\nfrom sideeffect import helper\n", 1)
    (tmp_path / "train.py").write_text(model)
    impl = import_implementation(tmp_path / "train.py")
    assert not (tmp_path / "imported.txt").exists()
    assert "line 8: import of helper left out (the definitions do not use it)" in impl.notes, impl.notes
    assert "sideeffect" not in sys.modules


def test_a_needed_sibling_import_still_runs(tmp_path: Path) -> None:
    (tmp_path / "widths.py").write_text("WIDTH = 64\n")
    model = (CORPUS_DIR / "script_style.py").read_text()
    model = model.replace("import math\n", "import math\nfrom widths import WIDTH\n", 1)
    model = model.replace("    n_embd: int = 768\n", "    n_embd: int = WIDTH\n", 1)
    (tmp_path / "train.py").write_text(model)
    impl = import_implementation(tmp_path / "train.py")
    assert impl.config_cls is not None and impl.config_cls().n_embd == 64
    assert not any("import of WIDTH" in n for n in impl.notes), impl.notes


def test_a_package_importing_itself_by_absolute_name(tmp_path: Path) -> None:
    package = write_absolute_package(tmp_path).parent
    impl = import_implementation(package / "model.py")
    assert impl.gpt_cls.__name__ == "GPT"
    assert any(n.startswith(f"{package.parent} on the path while importing") for n in impl.notes), impl.notes
    # Nothing of the package stays behind in this process, and the path is as before.
    assert not [m for m in sys.modules if m.split(".")[0] == "minigpt"]
    assert str(package.parent) not in sys.path
    assert import_implementation(package).gpt_cls.__name__ == "GPT"


def test_an_installed_package_of_the_same_name_is_not_shadowed(tmp_path: Path) -> None:
    # A file in a folder named like an installed package (json/) that imports it: the library stays.
    folder = tmp_path / "json"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    model = (CORPUS_DIR / "script_style.py").read_text()
    (folder / "model.py").write_text(model.replace("import math\n", "import math\nimport json\n", 1))
    impl = import_implementation(folder / "model.py")
    assert not any("on the path while importing" in n for n in impl.notes), impl.notes


def test_a_syntax_error_is_still_an_implementation_error(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("class GPT(:\n")
    with pytest.raises(ImplementationError, match="SyntaxError"):
        import_implementation(tmp_path / "model.py")


def test_the_child_serves_tiktokens_gpt2_encoding_offline(tmp_path: Path) -> None:
    # Any read of a URL fails: the encoding must come from the offline cache the child sets up.
    script = textwrap.dedent(
        """\
        import tiktoken.load
        def no_network(blobpath):
            raise AssertionError(f"tiktoken tried to fetch {blobpath}")
        tiktoken.load.read_file = no_network
        from parity.sandbox.child import serve_tiktoken_offline
        cache = serve_tiktoken_offline()
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")
        print(enc.encode("hello world"), enc.n_vocab, sorted(p.name for p in cache.iterdir()))
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "elsewhere")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[31373, 995] 50257 ['6c7ea1a7e38e3a7f062df639a5b80947f075ffe6', "), (
        done.stdout
    )
    assert not (tmp_path / "elsewhere").exists()
