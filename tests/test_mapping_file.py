"""--mapping FILE: the user's mapping over the discovered roles, its format and its validation.

A book-style port whose query, key and value projections carry no telling names and are registered in
another order (value, key, query) is mapped by order, wrongly, and FAILs logits; its mapping file puts them
right and it PASSes, in process and through the bisect command. A bad file is refused when the options
are parsed (not JSON, an unknown checkpoint name, a bad field); a file that does not fit the model (an
unknown parameter, a shape unlike GPT-2's, a tensor left without a place) stops the build with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_load_by_role import small_checkpoint, write_book_style  # noqa: F401  (a fixture)
from test_structure_first import verdicts

from parity.core.errors import ImplementationError, UsageError
from parity.core.verdicts import Status
from parity.foreign.impl import import_implementation
from parity.foreign.mapping_file import mapping_option, read_mapping_file
from parity.frontends.bisect import SMALL_CONFIG
from parity.subject.subject import Subject
from parity.subject.targets import ParityTarget

REPO_ROOT = Path(__file__).resolve().parents[1]
QKV_LINES = """        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
"""
SHUFFLED = """        self.proj_a = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.proj_b = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.proj_c = nn.Linear(d_in, d_out, bias=qkv_bias)
"""
# The right places of the shuffled port's projections: proj_c is the query, proj_a the value.
QKV_MAPPING = {
    f"h.{{i}}.attn.c_attn.{kind}": [
        {"target": f"trf_blocks.{{i}}.att.proj_{letter}.{kind}", "rows": role}
        for letter, role in (("c", "query"), ("b", "key"), ("a", "value"))
    ]
    for kind in ("weight", "bias")
}


def write_shuffled(directory: Path) -> Path:
    """The tied book-style port with its query/key/value as proj_c/proj_b/proj_a, value registered first."""
    path = write_book_style(directory, tie=True)
    text = path.read_text().replace(QKV_LINES, SHUFFLED)
    text = text.replace("(self.W_query, self.W_key, self.W_value)", "(self.proj_c, self.proj_b, self.proj_a)")
    assert "self.W_query" not in text
    path.write_text(text)
    return path


def write_mapping(directory: Path, data: Any) -> Path:
    path = directory / "mapping.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def subject_with(path: Path, checkpoint: Path, mapping: Path | None) -> Subject:
    target = ParityTarget(
        "small", SMALL_CONFIG, "synthetic", "test", "cpu", torch.float64, checkpoint=checkpoint
    )
    return Subject(import_implementation(path, mapping=mapping), target)


def test_mapping_file_puts_misordered_projections_right(tmp_path: Path, small_checkpoint: Path) -> None:  # noqa: F811
    path = write_shuffled(tmp_path)
    wrong = verdicts(subject_with(path, small_checkpoint, None), ["logits"])
    assert wrong["logits"].status == Status.FAIL
    mapped = subject_with(path, small_checkpoint, write_mapping(tmp_path, QKV_MAPPING))
    got = verdicts(mapped, ["logits", "grads", "tied-storage"])
    assert {c: v.status for c, v in got.items()} == dict.fromkeys(got, Status.PASS), got
    lines = "\n".join(mapped.impl.notes)
    assert "h.{i}.attn.c_attn.weight -> trf_blocks.{i}.att.proj_c.weight[rows 0:64]" in lines


def test_bisect_command_takes_the_mapping_file(tmp_path: Path) -> None:
    path, mapping = write_shuffled(tmp_path / "repo"), write_mapping(tmp_path, QKV_MAPPING)
    argv = [sys.executable, "-m", "parity.frontends.bisect", "--impl", str(path), "--check", "logits"]
    done = subprocess.run([*argv, "--mapping", str(mapping)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trf_blocks.{i}.att.proj_a.weight[rows 128:192]" in done.stdout
    bad = write_mapping(tmp_path, {"h.{i}.attn.c_atn.weight": "x.{i}.w"})
    refused = subprocess.run([*argv, "--mapping", str(bad)], cwd=tmp_path, capture_output=True, text=True)
    assert (
        refused.returncode == 129
        and "'h.{i}.attn.c_atn.weight' is not a GPT-2 checkpoint name" in refused.stderr
    )


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("{not json", "cannot read a JSON object"),
        ([1, 2], "write a JSON object of checkpoint names"),
        ({"wte.weight": {"target": "tok_emb.weight", "rows": "queries"}}, "rows is query, key, value"),
        ({"wte.weight": {"target": "tok_emb.weight", "layout": "conv1d"}}, "unknown field(s) ['layout']"),
        ({"h.{i}.ln_1.weight": "norm1.scale"}, "a block tensor's target has {i} too"),
    ],
)
def test_a_bad_mapping_file_is_refused_when_parsed(tmp_path: Path, data: Any, says: str) -> None:
    path = write_mapping(tmp_path, data)
    with pytest.raises(UsageError, match=None) as e:
        mapping_option(str(path))
    assert says in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ({"wte.weight": "tok_embedding.weight"}, "unknown target parameter tok_embedding.weight"),
        ({"wpe.weight": "tok_emb.weight"}, "shape mismatch: wpe.weight -> tok_emb.weight gives (64, 64)"),
        (
            {"h.{i}.attn.c_proj.weight": {"target": "trf_blocks.{i}.att.out_proj.weight", "rows": [0, 32]}},
            "gives (32, 64), the parameter is (64, 64)",
        ),
    ],
)
def test_a_mapping_that_does_not_fit_the_model_stops_the_build(
    tmp_path: Path,
    small_checkpoint: Path,  # noqa: F811
    entries: dict[str, Any],
    says: str,
) -> None:
    subject = subject_with(write_shuffled(tmp_path), small_checkpoint, write_mapping(tmp_path, entries))
    with pytest.raises(ImplementationError) as e:
        subject.model()
    assert says in str(e.value) and "--mapping" in str(e.value)


def test_a_role_left_without_a_place_is_named(tmp_path: Path) -> None:
    from parity.foreign.mapping_file import apply_mapping_file
    from parity.foreign.roles import RoleMap

    impl = import_implementation(write_shuffled(tmp_path))
    model, _ = impl.build(SMALL_CONFIG)
    file = read_mapping_file(write_mapping(tmp_path, {"wte.weight": "tok_emb.weight"}))
    with pytest.raises(ImplementationError, match="missing role: wpe.weight has no place"):
        apply_mapping_file(file, RoleMap(), model, SMALL_CONFIG)
