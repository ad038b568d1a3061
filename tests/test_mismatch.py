"""nanogpt.mismatch: one wording for the tensors a loader finds missing, unexpected or misshapen."""

from __future__ import annotations

from nanogpt.mismatch import mismatch_clauses


def test_each_kind_is_counted_and_named() -> None:
    text = mismatch_clauses(["a", "b"], ["c"], ["d (1,) (expected (2,))"])
    assert text == (
        "2 tensor(s) missing: a, b; 1 unexpected tensor(s): c; "
        "1 tensor(s) with the wrong shape: d (1,) (expected (2,))"
    )


def test_only_the_first_names_are_shown_and_empty_kinds_are_left_out() -> None:
    names = [f"t{i}" for i in range(8)]
    assert mismatch_clauses([], names, shown=2) == "8 unexpected tensor(s): t0, t1, ..."
    assert mismatch_clauses([], []) == ""


def test_a_loader_names_its_own_kinds() -> None:
    label = "parameter(s) get no value from the checkpoint"
    text = mismatch_clauses(["lm_head.bias"], [], missing_label=label)
    assert text == "1 parameter(s) get no value from the checkpoint: lm_head.bias"
