"""Chunked comparison: comparing a tensor chunk by chunk gives the record one whole comparison gives.

Every field of the record (mismatches, maxima and where they are, non-finite counts) equals what
compare_tensors returns on the whole tensor, for non-contiguous and column-major views too; the relative
difference norm fails a systematic difference that no element shows; the float32 screen keeps the exact
verdict even for elements closer to their bound than float32 resolves.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from parity.core.compare import compare_tensors
from parity.core.tolerances import Tolerance, gradients_tolerance
from parity.numerics.chunked import compare_chunked


def _same_record(a: Any, b: Any) -> None:
    """Every field equal; the relative norm up to summation order (chunks sum their squares separately) and,
    for float32 inputs, the float32 rounding of each screened difference (relative 2**-24)."""
    a, b = a.to_json(), b.to_json()
    assert a.pop("rel_norm") == pytest.approx(b.pop("rel_norm"), rel=1e-6, abs=0.0)
    assert a == b


@pytest.mark.parametrize("shape", [(3, 7, 11), (40,), (13, 9)])
def test_compare_chunked_equals_one_comparison(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    expected = torch.randn(shape, generator=g, dtype=torch.float64)
    actual = expected + 1e-7 * torch.randn(shape, generator=g, dtype=torch.float64)
    actual.view(-1)[5] += 1e-3  # one clear mismatch, and the maximum
    tol = Tolerance(rtol=1e-6, atol=1e-6, reason="test")
    _same_record(
        compare_chunked("t", "x", actual, expected, tol, chunk_elements=8),
        compare_tensors("t", "x", actual, expected, tol),
    )
    # A transposed (non-contiguous) view, as a Conv1D gradient is compared; and one side alone transposed,
    # as an implementation's Linear gradient against HF's Conv1D one seen through its transpose.
    if len(shape) == 2:
        _same_record(
            compare_chunked("t", "x", actual.t(), expected.t(), tol, chunk_elements=8),
            compare_tensors("t", "x", actual.t(), expected.t(), tol),
        )
        column_major = expected.t().contiguous().t()
        for found in (0.0, 1e-3):  # every difference within atol, and one above it
            shifted = expected.clone()
            shifted.view(-1)[5] += found
            _same_record(
                compare_chunked("t", "x", shifted, column_major, tol, chunk_elements=32),  # rows of 3
                compare_tensors("t", "x", shifted, column_major, tol),
            )


def _edge_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(12, 10, generator=g)
    tied_max = base.clone()
    tied_max[2, 3] += 0.5
    tied_max[9, 1] += 0.5  # two equal maxima in different chunks: the first one is reported
    tiny = 1e-7 * torch.randn(12, 10, generator=g)  # everything below atol: no significant entry
    half = base.clone()
    half[6:] = 0.0  # zeros in expected: relative error only where |expected| > atol
    return [
        ("identical", base, base.clone()),
        ("tied maxima", tied_max, base),
        ("below atol", tiny, torch.zeros_like(tiny)),
        ("zeros expected", base, half),
        ("float32 vs float64 layouts", base.t().contiguous().t(), base.double() + 1e-9),
    ]


@pytest.mark.parametrize("case", range(5))
def test_compare_chunked_edge_cases_equal_one_comparison(case: int) -> None:
    _, actual, expected = _edge_cases()[case]
    tol = Tolerance(rtol=1e-4, atol=1e-5, reason="test")
    _same_record(
        compare_chunked("t", "x", actual, expected, tol, chunk_elements=20),
        compare_tensors("t", "x", actual, expected, tol),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_systematic_difference_under_the_elementwise_bound_fails_by_its_norm(dtype: torch.dtype) -> None:
    # Every element 5e-5 off (relative): under rtol=atol=1e-4 everywhere, but 5e-5 of the norm > 2e-5.
    g = torch.Generator().manual_seed(8)
    expected = torch.randn(300, 200, generator=g, dtype=dtype)
    actual = expected * (1 + 5e-5)
    tol = Tolerance(rtol=1e-4, atol=1e-4, reason="test", norm=2e-5)
    for rec in (
        compare_tensors("t", "x", actual, expected, tol),
        compare_chunked("t", "x", actual, expected, tol, chunk_elements=1000),
    ):
        assert rec.mismatched == 0 and rec.norm_exceeded and not rec.passed
        assert rec.rel_norm == pytest.approx(5e-5, rel=1e-2)  # float32 rounds each product
        assert f"relative difference norm {rec.rel_norm:.3e}, above the limit 2e-05" in rec.summary()
    # Rounding-sized noise passes both criteria.
    noisy = expected + 1e-7 * torch.randn(300, 200, generator=g, dtype=dtype)
    assert compare_chunked("t", "x", noisy, expected, tol, chunk_elements=1000).passed


def test_norm_of_a_tensor_within_atol_of_zero_is_not_judged() -> None:
    # A gradient whose exact value is zero is rounding noise on both sides: the element-wise bound judges it.
    g = torch.Generator().manual_seed(9)
    expected = 1e-9 * torch.randn(64, 64, generator=g)
    actual = 1e-9 * torch.randn(64, 64, generator=g)
    tol = Tolerance(rtol=1e-3, atol=1e-5, reason="test", norm=2e-5)
    rec = compare_tensors("t", "x", actual, expected, tol)
    assert rec.rel_norm == 0.0 and rec.passed


@pytest.mark.parametrize("where", ["actual", "expected"])
def test_compare_chunked_counts_every_nonfinite_value(where: str) -> None:
    expected = torch.zeros(50, 2, dtype=torch.float64)
    actual = expected.clone()
    broken = actual if where == "actual" else expected
    broken[3, 0], broken[40, 1] = float("nan"), float("inf")
    tol = Tolerance(rtol=1e-6, atol=1e-6, reason="test")
    rec = compare_chunked("t", "x", actual, expected, tol, chunk_elements=8)
    assert not rec.passed and "1 NaN and 1 Inf" in (rec.nonfinite or "")


def _near_the_bound(
    n: int, tol: Tolerance, seed: int, closest: float = 1e-9, farthest: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 pairs whose |a - e| lies within closest..farthest (relative) of atol + rtol * |e|, either side.

    Below ~1e-7 that is closer than float32 resolves: the elements its rounding could misjudge. About half
    of them fail exactly.
    """
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, generator=g, dtype=torch.float64).mul_(10.0 ** torch.randint(-6, 2, (n,), generator=g))
    e = e.float().double()  # representable in float32
    lo, hi = math.log10(closest), math.log10(farthest)
    offset = 10.0 ** (torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo)
    side = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    sign = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    a = e + sign * (tol.atol + tol.rtol * e.abs()) * (1 + side * offset)
    return a.float(), e.float()


@pytest.mark.parametrize("seed", range(3))
def test_screened_float32_comparison_keeps_the_exact_verdict(seed: int) -> None:
    tol = gradients_tolerance(torch.float32)
    actual, expected = _near_the_bound(60_000, tol, seed)
    exact = compare_tensors("t", "x", actual, expected, tol)
    assert 0 < exact.mismatched < exact.total  # the case is hard: both sides of the bound occur
    rec = compare_chunked("t", "x", actual.view(600, 100), expected.view(600, 100), tol, chunk_elements=1000)
    assert (rec.passed, rec.mismatched, rec.total) == (exact.passed, exact.mismatched, exact.total)
    assert rec.max_abs == pytest.approx(exact.max_abs, rel=2.0**-22)


def test_screened_float32_comparison_is_exact_below_float32_resolution() -> None:
    # Chunks of 10 elements, every one closer to its bound than float32 resolves: without the margin, a
    # chunk of barely failing elements that float32 rounds to passing would pass unnoticed.
    tol = gradients_tolerance(torch.float32)
    actual, expected = _near_the_bound(10_000, tol, seed=7, closest=1e-10, farthest=1e-7)
    exact = compare_tensors("t", "x", actual, expected, tol)
    rec = compare_chunked("t", "x", actual.view(-1, 10), expected.view(-1, 10), tol, chunk_elements=10)
    assert (rec.passed, rec.mismatched) == (exact.passed, exact.mismatched)


def test_screened_float32_comparison_reports_float32_precision_when_it_passes() -> None:
    g = torch.Generator().manual_seed(4)
    expected = torch.randn(300, 200, generator=g)
    actual = expected + 1e-6 * torch.randn(300, 200, generator=g)
    tol = gradients_tolerance(torch.float32)
    rec = compare_chunked("t", "x", actual, expected, tol, chunk_elements=1000)
    exact = compare_tensors("t", "x", actual, expected, tol)
    assert rec.passed and exact.passed and rec.mismatched == 0
    assert rec.max_abs == pytest.approx(exact.max_abs, rel=2.0**-22)
    assert rec.max_rel == pytest.approx(exact.max_rel, rel=2.0**-21)
    diff = (actual.double() - expected.double()).abs()
    assert float(diff[rec.where]) == pytest.approx(exact.max_abs, rel=2.0**-22)


def test_one_failing_element_among_screened_chunks_gets_the_exact_record() -> None:
    g = torch.Generator().manual_seed(5)
    expected = torch.randn(400, 100, generator=g)
    actual = expected.clone()
    actual[123, 45] += 0.25
    tol = gradients_tolerance(torch.float32)
    rec = compare_chunked("t", "x", actual, expected, tol, chunk_elements=1000)
    exact = compare_tensors("t", "x", actual, expected, tol)
    _same_record(rec, exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_major_pairs_are_compared_through_their_transposes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    expected = torch.randn(90, 70, generator=g, dtype=dtype)
    actual = expected + 1e-7 * torch.randn(90, 70, generator=g, dtype=dtype)
    actual[80, 3] += 1e-2  # the maximum, and a mismatch
    tol = Tolerance(rtol=1e-4, atol=1e-5, reason="test")
    rec = compare_chunked("t", "x", actual.t(), expected.t(), tol, chunk_elements=500)
    exact = compare_tensors("t", "x", actual.t(), expected.t(), tol)
    assert rec.where == exact.where == (3, 80) and rec.shape == (70, 90)
    assert (rec.mismatched, rec.passed) == (exact.mismatched, exact.passed) == (1, False)
