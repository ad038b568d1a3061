"""Ports in other names and layouts are loaded by role and judged through the mapping, in their own names.

An HF-lineage port (Conv1D weights stored (in, out), the head at `lm_head.decoder.weight` aliasing the
embedding) and a book-style port (`tok_emb`, separate `W_query`/`W_key`/`W_value`, `out_head`) load the
checkpoint placed by the roles found in the built model (nanogpt.schema.TensorMapping), and PASS logits,
grads and tied-storage at float64 on the bisect command's small checkpoint; the gradient records carry the
implementation's own names. nanoGPT-named code keeps the identity mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bisect_fixtures.corpus import write_book_style as corpus_book_style
from test_structure_first import subject_of, verdicts

from nanogpt.model import GPT
from nanogpt.schema import (
    EMBEDDING,
    HEAD,
    Placement,
    TensorMapping,
    identity_mapping,
    mapping_of,
    tensor_shapes,
)
from parity.core.verdicts import Status
from parity.foreign.load import PLACED_BY_ROLE
from parity.frontends.bisect import SMALL_CONFIG
from parity.numerics.tie import get_tensor
from parity.subject.synthetic import ensure_synthetic_checkpoint

pytest_plugins = ["pytester"]

CORPUS = Path(__file__).parent / "bisect_fixtures" / "corpus"


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bisect command's default synthetic checkpoint, written under a temporary directory."""
    path, _ = ensure_synthetic_checkpoint(SMALL_CONFIG, "small", root=tmp_path_factory.mktemp("checkpoints"))
    return path


def write_book_style(directory: Path, tie: bool) -> Path:
    """The book-style port (tests/bisect_fixtures/corpus.py), its head tied to the token embedding or not."""
    return corpus_book_style(tie)(directory)


def test_identity_mapping_is_nanogpt_names() -> None:
    mapping = identity_mapping(SMALL_CONFIG)
    assert mapping.identity and mapping.tied
    assert list(mapping.placements) == list(tensor_shapes(SMALL_CONFIG))
    assert mapping.target(HEAD) == HEAD and mapping.role("transformer.h.1.mlp.c_fc.weight").endswith(
        "c_fc.weight"
    )
    conv1d = torch.arange(6.0).view(2, 3)  # HF's (in, out) weight of a Conv1D-set name: transposed
    assert torch.equal(mapping.hf_view("transformer.h.0.attn.c_proj.weight", conv1d), conv1d.t())


def test_mapping_views_split_rows_and_transposes() -> None:
    places = [
        Placement("q.weight", (0, 2)),
        Placement("k.weight", (2, 4)),
        Placement("v.weight", (4, 6), True),
    ]
    mapping = TensorMapping({"transformer.h.0.attn.c_attn.weight": places}, tied=True)
    hf = torch.arange(12.0).view(2, 6)  # HF's c_attn weight, Conv1D (in, out): rows 0:2 of its transpose
    assert torch.equal(mapping.hf_view("q.weight", hf), hf.t()[0:2])
    assert torch.equal(mapping.hf_view("v.weight", hf), hf.t()[4:6].t())
    assert mapping.role("k.weight") == "transformer.h.0.attn.c_attn.weight" and not mapping.identity
    assert mapping.role("unmapped.weight") == "unmapped.weight"


def test_models_the_harness_builds_carry_their_mapping(tmp_path: Path, small_checkpoint: Path) -> None:
    book = subject_of(write_book_style(tmp_path, tie=False), small_checkpoint)
    built = book.built_model()
    assert (
        get_tensor(built, EMBEDDING) is built.tok_emb.weight
        and get_tensor(built, HEAD) is built.out_head.weight
    )
    assert mapping_of(book.model()).head == "out_head.weight"
    assert mapping_of(GPT(SMALL_CONFIG)).identity  # not built by the harness


@pytest.mark.parametrize("port", ["hf_lineage", "book_style_tied"])
def test_faithful_port_loaded_by_role_passes_logits_grads_and_tied_storage(
    port: str, tmp_path: Path, small_checkpoint: Path
) -> None:
    if port == "hf_lineage":
        path = tmp_path / "hf_lineage.py"
        path.write_text((CORPUS / "hf_lineage.py").read_text())
    else:
        path = write_book_style(tmp_path, tie=True)
    subject = subject_of(path, small_checkpoint)
    got = verdicts(
        subject, ["architecture", "logits", "grads", "tied-gradient", "tied-storage", "train-steps"]
    )
    assert {c: v.status for c, v in got.items()} == dict.fromkeys(got, Status.PASS), got
    names = {r.tensor for r in got["grads"].records}
    assert {n for n, _ in subject.model().named_parameters()} == names  # the implementation's own names
    assert PLACED_BY_ROLE in subject.impl.notes
    if port == "hf_lineage":
        assert (
            "  lm_head.weight: the token embedding (tied) (lm_head.decoder.weight: the same Parameter)"
            in (subject.impl.notes)
        )
    else:
        assert "trf_blocks.0.att.W_key.weight" in names
        assert any("W_query.weight[rows 0:64], trf_blocks.{i}.att.W_key" in n for n in subject.impl.notes)


def test_untied_book_style_fails_tied_storage_in_its_own_names(
    tmp_path: Path, small_checkpoint: Path
) -> None:
    subject = subject_of(write_book_style(tmp_path, tie=False), small_checkpoint)
    got = verdicts(subject, ["logits", "tied-storage"])
    assert got["logits"].status == Status.PASS
    assert got["tied-storage"].status == Status.FAIL
    assert "out_head.weight (GPT-2's lm_head.weight)" in got["tied-storage"].reason
    assert "self.tok_emb.weight = self.out_head.weight" in got["tied-storage"].reason


def test_nanogpt_named_code_keeps_the_identity_path(tmp_path: Path, small_checkpoint: Path) -> None:
    from bisect_fixtures.variants import write_model

    subject = subject_of(write_model(tmp_path), small_checkpoint)
    assert mapping_of(subject.model()).identity
    assert PLACED_BY_ROLE not in subject.impl.notes


def test_a_port_shares_hugging_face_storage_by_role(tmp_path: Path, small_checkpoint: Path) -> None:
    from parity.subject.loading import share_parameters

    subject = subject_of(write_book_style(tmp_path, tie=True), small_checkpoint)
    model, hf = subject.model(), subject.hf()
    assert share_parameters(model, hf, source_is_hf=True) == []  # the memory plan's path: nothing kept apart
    c_attn = hf.transformer.h[0].attn.c_attn.weight
    value = model.trf_blocks[0].att.W_value.weight
    assert value.untyped_storage().data_ptr() == c_attn.untyped_storage().data_ptr()
    assert verdicts(subject, ["logits"])["logits"].status == Status.PASS


def test_the_json_report_holds_the_mapping_through_both_front_ends(
    pytester: pytest.Pytester, small_checkpoint: Path, tmp_path: Path
) -> None:
    """The load summary, mapping included, is in the report even when architecture is not among the checks."""
    from front_ends import run_pytest_parity

    from parity.frontends.bisect import run as bisect_run

    impl = write_book_style(tmp_path / "book", tie=True)
    expected = "wte.weight -> tok_emb.weight"
    bisect_report = tmp_path / "bisect.json"
    code = bisect_run(
        ["--impl", str(impl), "--model", str(small_checkpoint), "--checks", "logits"]
        + ["--parity-report", str(bisect_report)]
    )
    pytest_code, output, data = run_pytest_parity(
        pytester, impl, small_checkpoint, tmp_path / "pytest.json", "-k", "logits", in_process=False
    )
    assert (code, pytest_code) == (0, 0), output[-2000:]
    for report in (json.loads(bisect_report.read_text()), data):
        (notes,) = report["load"].values()
        assert PLACED_BY_ROLE in notes and any(n.strip() == expected for n in notes), notes
