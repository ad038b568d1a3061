"""Comparing large tensors in chunks: the record a single `compare_tensors` call would return, at a fraction
of its memory and time.

compare_tensors converts both sides to float64 and builds several temporaries of that size; for the
full-block logits or the tied matrix's gradient of gpt2-xl that is gigabytes. `compare_chunked` compares
row chunks on as many Python threads as torch has intra-op threads, screening float32 pairs in float32 and
falling back to the exact float64 comparison wherever an element comes near its bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from parity.core.compare import Comparison, compare_tensors, relative_norm
from parity.core.tolerances import SCREEN_MARGIN, Tolerance

# Elements per chunk of `compare_chunked`: 0.5 MB of float64 temporaries, which the allocator reuses (one
# call on a 50257 x 768 float64 tensor spends 3x longer page-faulting fresh 300 MB temporaries).
CHUNK_ELEMENTS = 1 << 16
# Dtypes whose values float32 holds exactly: these are screened in float32 (half the bytes, twice the
# vector width of float64) before any element is compared exactly.
SCREENED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread for the duration; restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _transposed(t: torch.Tensor) -> bool:
    """A 2-D tensor laid out column-major: a contiguous one's transpose (a Conv1D weight seen as Linear)."""
    return t.dim() == 2 and t.size(0) > 1 and t.size(1) > 1 and t.t().is_contiguous()


def compare_chunked(
    check: str,
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Comparison:
    """`compare_tensors`, row-chunk by row-chunk, merged into the record a single call would return.

    compare_tensors converts both sides to float64 and builds several temporaries of that size; for the
    full-block logits or the tied matrix's gradient of gpt2-xl that is gigabytes. Chunks are compared on
    as many Python threads as torch has intra-op threads, each op single-threaded: on shared cores a
    parallel region waits for any descheduled thread, while independent chunks do not (figures in
    docs/measurements.md). Non-finite values take the single-call path, so that their message counts
    every NaN and Inf.

    Float64 inputs are compared exactly as compare_tensors does (every field bitwise equal). Float32 and
    half-precision pairs are screened in float32 first (`_finite_record`): the verdict and the mismatch
    count stay exact, and max_abs, max_rel and where are those of float32 arithmetic (relative error
    <= 2**-22; with near-equal maxima `where` may name either), in under half the time. Two column-major
    2-D tensors (an implementation's Linear weight that is a view of Hugging Face's Conv1D weight, and
    their gradients) are compared through their transposes, so that each chunk reads contiguous memory rather
    than one float per cache line.
    """
    if actual.shape != expected.shape or actual.dim() == 0 or actual.numel() <= chunk_elements:
        with one_thread():
            return compare_tensors(check, name, actual, expected, tol)
    if _transposed(actual) and _transposed(expected):
        rec = compare_chunked(check, name, actual.t(), expected.t(), tol, chunk_elements)
        rec.shape = tuple(actual.shape)
        rec.where = tuple(reversed(rec.where)) if rec.where is not None else None
        return rec
    screened = actual.dtype in SCREENED_DTYPES and expected.dtype in SCREENED_DTYPES and tol.atol > 2.0**-100
    dtype = torch.float32 if screened else torch.float64
    # Rows of the last dimension, whatever the leading dimensions (a (1, 1024, V) logits tensor has one
    # index in dim 0); reshape is a view for the contiguous logits and for a transposed 2-D gradient.
    cols = actual.size(-1)
    rows_a, rows_e = actual.reshape(-1, cols), expected.reshape(-1, cols)
    step = max(1, chunk_elements // cols)
    starts = range(0, rows_a.size(0), step)
    workers = max(1, torch.get_num_threads())
    with one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            pool.map(
                lambda i: _finite_record(check, name, rows_a[i : i + step], rows_e[i : i + step], tol, dtype),
                starts,
            )
        )
    if any(part is None for part in parts):
        return compare_tensors(check, name, actual, expected, tol)
    merged = parts[0][0]  # type: ignore[index]
    diff_sq = expected_sq = 0.0
    for start, found in zip(starts, parts, strict=True):
        assert found is not None
        part, part_diff_sq, part_expected_sq = found
        diff_sq += part_diff_sq
        expected_sq += part_expected_sq
        if part.where is not None:
            part.where = _unravel((start + part.where[0]) * cols + part.where[1], tuple(actual.shape))
        if part is merged:
            continue
        if part.max_abs > merged.max_abs:  # strictly greater: the first maximum wins, as in torch.argmax
            merged.max_abs, merged.where = part.max_abs, part.where
        merged.max_rel = max(merged.max_rel, part.max_rel)
        merged.mismatched += part.mismatched
        merged.passed = merged.passed and part.passed
    merged.shape, merged.total = tuple(actual.shape), actual.numel()
    merged.rel_norm = relative_norm(diff_sq, expected_sq, merged.total, tol)
    merged.norm_limit = tol.norm
    merged.passed = merged.passed and not merged.norm_exceeded
    return merged


def _finite_record(
    check: str,
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    tol: Tolerance,
    dtype: torch.dtype = torch.float64,
) -> tuple[Comparison, float, float] | None:
    """compare_tensors' element-wise record of a 2-D chunk in 14 passes instead of ~25, with the chunk's sums
    of squared differences and squared expected values (the merged record's relative norm); None if a value
    is not finite.

    In float64 (the default): the same arithmetic as compare_tensors, operation for operation (|a - e|;
    atol + rtol * |e|, skipped when no difference exceeds atol; |a - e| / |e| where |e| > atol, where
    compare_tensors' clamp is a no-op), so every field but the relative norm (its sums of squares are dot
    products) is bitwise what compare_tensors returns (tests/test_chunked_comparison.py checks it). Finiteness
    comes free: a NaN or Inf on either side makes |a - e| non-finite there, and its maximum with it; the
    caller then takes compare_tensors' path.

    In float32 (float32 or half-precision inputs): a screen. Every element whose |a - e| passes
    atol + rtol * |e| with the bound shrunk by SCREEN_MARGIN passes in exact arithmetic too (see
    parity/core/tolerances.py). If all of the chunk's elements do, it passed with 0 mismatches, and its
    max_abs, max_rel and where are read from the float32 arithmetic; if any does not, the chunk is compared
    again in float64, so a failing chunk's record is compare_tensors' own.
    """
    a = actual.detach().to(dtype, memory_format=torch.contiguous_format)
    e = expected.detach().to(dtype, memory_format=torch.contiguous_format)
    diff = torch.sub(a, e).abs_()
    max_abs, index = diff.view(-1).max(0)  # the first maximum, as torch.argmax; NaN propagates
    if not torch.isfinite(max_abs):
        return None
    e_abs = e.abs()
    if dtype == torch.float64:
        # Sums of squares as dot products: one pass each, no temporary. No element exceeds its bound
        # atol + rtol * |e| >= atol when the largest difference does not exceed atol (the common case).
        diff_sq = float(torch.dot(diff.view(-1), diff.view(-1)))
        expected_sq = float(torch.dot(e.reshape(-1), e.reshape(-1)))
        mismatched = 0
        if float(max_abs) > tol.atol:
            mismatched = int(diff.gt(e_abs.mul(tol.rtol).add_(tol.atol)).sum())
    else:
        # Sums of squares accumulated in float64 (a 64K-element float32 sum would carry ~1e-3 relative error).
        diff_sq = float(diff.square().sum(dtype=torch.float64))
        expected_sq = float(e.square().sum(dtype=torch.float64))
        if bool(diff.gt(e_abs.mul(tol.rtol).add_(tol.atol).mul_(1.0 - SCREEN_MARGIN)).any()):
            return _finite_record(check, name, actual, expected, tol)
        mismatched = 0
    rel = diff.div_(e_abs).masked_fill_(e_abs <= tol.atol, 0.0)  # diff is not needed after this
    record = Comparison(
        check=check,
        tensor=name,
        shape=tuple(actual.shape),
        max_abs=float(max_abs),
        max_rel=float(rel.max()),
        rtol=tol.rtol,
        atol=tol.atol,
        mismatched=mismatched,
        total=actual.numel(),
        passed=mismatched == 0,
        where=divmod(int(index), diff.size(1)),
    )
    return record, diff_sq, expected_sq


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of a flat (row-major) index."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))
