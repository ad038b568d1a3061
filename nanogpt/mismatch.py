"""One wording for stored tensors that do not fit a model: the names missing, unexpected or misshapen.

Three loaders compare what a checkpoint holds with what a model expects: the training-checkpoint loader
(`nanogpt.checkpoint`), the Hugging Face converter (`nanogpt.hf`) and the loader of an implementation
under test (`parity.foreign.impl`). Each lists the differences with `mismatch_clauses`, so the message
has the same shape whichever loader refused: a count and the first few names per kind.
"""

from __future__ import annotations

from collections.abc import Sequence


def mismatch_clauses(
    missing: Sequence[str],
    unexpected: Sequence[str],
    wrong_shape: Sequence[str] = (),
    *,
    missing_label: str = "tensor(s) missing",
    unexpected_label: str = "unexpected tensor(s)",
    wrong_shape_label: str = "tensor(s) with the wrong shape",
    shown: int = 3,
) -> str:
    """'2 tensor(s) missing: a, b; 1 unexpected tensor(s): c' (shown names per kind); '' if all are empty."""
    clauses = []
    kinds = ((missing, missing_label), (unexpected, unexpected_label), (wrong_shape, wrong_shape_label))
    for names, label in kinds:
        if names:
            more = ", ..." if len(names) > shown else ""
            clauses.append(f"{len(names)} {label}: {', '.join(names[:shown])}{more}")
    return "; ".join(clauses)
