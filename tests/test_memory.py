"""Tests of what makes gpt2-large and gpt2-xl fit: the memory plan and fit check, shared weight storage,
chunked comparisons, gradients compared as they are produced, and the streamed synthetic checkpoint.

Everything runs on a tiny GPT-2 (2 layers, 16 channels, 97 tokens) in milliseconds; available memory is
read from fake /proc/meminfo and cgroup files under tmp_path, so the fit check is tested without a machine
of any particular size.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open

from nanogpt.model import GPTConfig, gpt2_config
from nanogpt.schema import CONV1D_SUFFIXES
from parity.core.compare import ParityFailure, compare_gradients, compare_tensors
from parity.core.tolerances import Tolerance, gradients_tolerance
from parity.numerics.chunked import compare_chunked
from parity.numerics.forward import check_logits, hf_logits, loss_of, reference_logits
from parity.numerics.gradients import check_gradients
from parity.numerics.tie import EMBEDDING, HEAD, get_tensor, same_storage
from parity.subject import memory
from parity.subject.batches import gradient_batch
from parity.subject.loading import load_hf, load_reference, share_parameters
from parity.subject.memory import Available, available_memory, memory_problem, plan_memory
from parity.subject.synthetic import (
    ensure_synthetic_checkpoint,
    synthetic_openai_weights,
    write_synthetic_safetensors,
)
from parity.subject.targets import resolve_targets

TINY = GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
GB = 1_000_000_000


# ------------------------------------------------------------------------------------------------------
# the plan and the fit check


def test_plan_shares_weights_exactly_above_the_threshold() -> None:
    for name, dtype in [("gpt2", torch.float64), ("gpt2-medium", torch.float64),
                        ("gpt2-large", torch.float32), ("gpt2-xl", torch.float32)]:  # fmt: skip
        plan = plan_memory(gpt2_config(name), dtype)
        assert plan.share_weights == (plan.param_bytes > memory.SHARE_WEIGHTS_ABOVE_BYTES), name
    assert not plan_memory(gpt2_config("gpt2"), torch.float64).share_weights
    assert plan_memory(gpt2_config("gpt2-xl"), torch.float32).share_weights


def test_estimate_follows_the_dtype_and_the_storage() -> None:
    xl = gpt2_config("gpt2-xl")
    f32, f64 = plan_memory(xl, torch.float32), plan_memory(xl, torch.float64)
    assert f64.param_bytes == 2 * f32.param_bytes
    assert f64.estimated_peak_bytes > f32.estimated_peak_bytes
    # Shared storage: Hugging Face's weights plus one set of gradients, plus transients.
    assert f32.estimated_peak_bytes >= memory.SHARED_PEAK_FACTOR * f32.param_bytes
    small = plan_memory(gpt2_config("gpt2"), torch.float64)
    assert small.estimated_peak_bytes >= memory.INDEPENDENT_PEAK_FACTOR * small.param_bytes


def _meminfo(tmp_path: Path, available_kb: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       24731708 kB\nMemFree:  1000 kB\nMemAvailable:   {available_kb} kB\n")
    return path


def test_available_memory_reads_memavailable(tmp_path: Path) -> None:
    got = available_memory(_meminfo(tmp_path, 20_000_000), tmp_path / "no-cgroup")
    assert got == Available(20_000_000 * 1024, "MemAvailable in /proc/meminfo")


def test_available_memory_takes_a_smaller_cgroup_v2_limit(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{8 * GB}\n")
    (cgroup / "memory.current").write_text(f"{3 * GB}\n")
    got = available_memory(_meminfo(tmp_path, 20_000_000), cgroup)
    assert got is not None and got.bytes == 5 * GB and "memory.max" in got.source


def test_available_memory_ignores_unlimited_cgroups(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text(f"{3 * GB}\n")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{3 * GB}\n")
    meminfo = _meminfo(tmp_path, 10_000_000)
    for cgroup in (v2, v1):
        assert available_memory(meminfo, cgroup) == Available(
            10_000_000 * 1024, "MemAvailable in /proc/meminfo"
        )


def test_available_memory_is_none_when_unreadable(tmp_path: Path) -> None:
    assert available_memory(tmp_path / "missing", tmp_path / "missing-cgroup") is None


def test_memory_problem_names_the_estimate_the_available_memory_and_the_override() -> None:
    plan = plan_memory(gpt2_config("gpt2-xl"), torch.float32)
    short = Available(plan.estimated_peak_bytes - 1, "MemAvailable in /proc/meminfo")
    problem = memory_problem("gpt2-xl", plan, short)
    assert problem is not None
    for part in ("gpt2-xl", memory.format_bytes(plan.estimated_peak_bytes), memory.format_bytes(short.bytes),
                 "MemAvailable", memory.IGNORE_ENV_VAR, "shared weight storage"):  # fmt: skip
        assert part in problem, (part, problem)
    assert memory_problem("gpt2-xl", plan, Available(plan.estimated_peak_bytes, "x")) is None
    assert memory_problem("gpt2-xl", plan, None) is None  # nothing to compare with: run


@pytest.mark.parametrize(("value", "ignored"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_override_env_var(monkeypatch: pytest.MonkeyPatch, value: str, ignored: bool) -> None:
    monkeypatch.setenv(memory.IGNORE_ENV_VAR, value)
    assert memory.ignore_memory_check() is ignored


def _session(targets: list[Any], uses_parity: bool = True) -> Any:
    from parity.frontends.pytest_frontend.plugin import TARGETS_KEY

    config = SimpleNamespace(option=SimpleNamespace(collectonly=False), stash={TARGETS_KEY: targets})
    item = SimpleNamespace(fixturenames=["parity_target"] if uses_parity else ["tmp_path"])
    return SimpleNamespace(config=config, items=[item])


def test_collection_stops_a_run_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.conftest as parity_conftest

    monkeypatch.delenv(memory.IGNORE_ENV_VAR, raising=False)
    targets = resolve_targets("gpt2-xl", "synthetic", "cpu", None)
    need = targets[0].memory.estimated_peak_bytes
    monkeypatch.setattr(parity_conftest, "available_memory", lambda: Available(need // 2, "MemAvailable"))
    with pytest.raises(pytest.UsageError, match="gpt2-xl: the parity run needs about"):
        parity_conftest.pytest_collection_finish(_session(targets))
    parity_conftest.pytest_collection_finish(_session(targets, uses_parity=False))  # no parity test: no check
    monkeypatch.setenv(memory.IGNORE_ENV_VAR, "1")
    parity_conftest.pytest_collection_finish(_session(targets))  # forced


def test_peak_rss_is_at_least_a_fresh_allocation() -> None:
    before = memory.peak_rss_bytes()
    block = torch.ones(64 * 1024 * 1024 // 8, dtype=torch.float64)  # 64 MiB, touched
    assert memory.peak_rss_bytes() >= before > 0
    assert memory.peak_rss_bytes() >= block.numel() * 8
    # A waited-for child that touches 128 MiB raises the children's peak to at least that.
    code = "import torch; torch.ones(128 * 1024 * 1024 // 8, dtype=torch.float64)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak_rss_bytes(children=True) >= 128 * 1024 * 1024


def test_xdist_workers_share_the_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.conftest as parity_conftest

    monkeypatch.delenv(memory.IGNORE_ENV_VAR, raising=False)
    targets = resolve_targets("gpt2-xl", "synthetic", "cpu", None)
    need = targets[0].memory.estimated_peak_bytes
    monkeypatch.setattr(parity_conftest, "available_memory", lambda: Available(need * 3 // 2, "MemAvailable"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    parity_conftest.pytest_collection_finish(_session(targets))  # one process: fits
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")  # what xdist sets in each worker
    with pytest.raises(pytest.UsageError, match="shared by 2 pytest-xdist workers"):
        parity_conftest.pytest_collection_finish(_session(targets))
    # In a worker (config.workerinput) the problem fails every parity test's setup instead of crashing it.
    session = _session(targets)
    session.config.workerinput = {"workerid": "gw0"}
    parity_conftest.pytest_collection_finish(session)
    with pytest.raises(pytest.fail.Exception, match="shared by 2 pytest-xdist workers"):
        parity_conftest.fail_if_it_cannot_fit(session.config)


# ------------------------------------------------------------------------------------------------------
# chunked comparison


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
    _same_record(compare_chunked("t", "x", actual, expected, tol, chunk_elements=8),
                 compare_tensors("t", "x", actual, expected, tol))  # fmt: skip
    # A transposed (non-contiguous) view, as a Conv1D gradient is compared.
    if len(shape) == 2:
        _same_record(compare_chunked("t", "x", actual.t(), expected.t(), tol, chunk_elements=8),
                     compare_tensors("t", "x", actual.t(), expected.t(), tol))  # fmt: skip


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
    _same_record(compare_chunked("t", "x", actual, expected, tol, chunk_elements=20),
                 compare_tensors("t", "x", actual, expected, tol))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_systematic_difference_under_the_elementwise_bound_fails_by_its_norm(dtype: torch.dtype) -> None:
    # Every element 5e-5 off (relative): under rtol=atol=1e-4 everywhere, but 5e-5 of the norm > 2e-5.
    g = torch.Generator().manual_seed(8)
    expected = torch.randn(300, 200, generator=g, dtype=dtype)
    actual = expected * (1 + 5e-5)
    tol = Tolerance(rtol=1e-4, atol=1e-4, reason="test", norm=2e-5)
    for rec in (compare_tensors("t", "x", actual, expected, tol),
                compare_chunked("t", "x", actual, expected, tol, chunk_elements=1000)):  # fmt: skip
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


# ------------------------------------------------------------------------------------------------------
# shared storage and gradients compared as they are produced


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    path, _ = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)
    return path


@pytest.fixture
def shared_pair(tiny_checkpoint: Path) -> tuple[Any, Any]:
    """HF and the reference, float32, the reference's parameters views of HF's."""
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    ref = load_reference(tiny_checkpoint, torch.float32, "cpu")
    assert share_parameters(ref, hf, transposed=CONV1D_SUFFIXES) == []
    return ref, hf


def test_shared_parameters_are_views_of_hugging_face(shared_pair: tuple[Any, Any]) -> None:
    ref, hf = shared_pair
    theirs = dict(hf.named_parameters())
    for name, p in ref.named_parameters():
        other = theirs[name].t() if name.endswith(CONV1D_SUFFIXES) else theirs[name]
        assert same_storage(p, other), name
    assert ref.is_tied() and get_tensor(ref, HEAD) is get_tensor(ref, EMBEDDING)
    with torch.no_grad():
        hf.transformer.h[0].mlp.c_fc.weight[0, 1] += 1.0  # one write is seen through both models
    assert ref.transformer.h[0].mlp.c_fc.weight[1, 0] == hf.transformer.h[0].mlp.c_fc.weight[0, 1]


def test_a_parameter_loaded_wrong_keeps_its_own_storage(tiny_checkpoint: Path) -> None:
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    ref = load_reference(tiny_checkpoint, torch.float32, "cpu")
    with torch.no_grad():
        ref.transformer.h[1].ln_2.bias.add_(0.5)  # as if the loader had read another tensor
    kept = share_parameters(ref, hf, transposed=CONV1D_SUFFIXES)
    assert kept == ["transformer.h.1.ln_2.bias"]
    assert not same_storage(ref.transformer.h[1].ln_2.bias, hf.transformer.h[1].ln_2.bias)
    idx = torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ParityFailure, match="ln_2"):
        check_logits(ref, hf, idx, TINY.n_layer, "wrong bias")


def test_untied_control_shares_everything_but_its_head(tiny_checkpoint: Path) -> None:
    hf = load_hf(tiny_checkpoint, torch.float32, "cpu")
    untied = load_hf(tiny_checkpoint, torch.float32, "cpu", tie_word_embeddings=False)
    assert share_parameters(untied, hf) == [HEAD]
    assert same_storage(get_tensor(untied, EMBEDDING), get_tensor(hf, EMBEDDING))
    assert not same_storage(get_tensor(untied, HEAD), get_tensor(untied, EMBEDDING))


def test_streamed_gradients_equal_the_comparison_after_both_backwards(
    tiny_checkpoint: Path, shared_pair: tuple[Any, Any]
) -> None:
    ref, hf = shared_pair
    idx, targets = gradient_batch(TINY)
    records = check_gradients(ref, hf, idx, targets, TINY.vocab_size)
    assert all(p.grad is None for p in [*ref.parameters(), *hf.parameters()]), "matching pairs are freed"
    # The same comparison the old way, on independent models: both backward passes, then compare.
    ref2 = load_reference(tiny_checkpoint, torch.float32, "cpu")
    hf2 = load_hf(tiny_checkpoint, torch.float32, "cpu")

    loss_of(reference_logits(ref2, idx), targets).backward()
    loss_of(hf_logits(hf2, idx), targets).backward()
    tol = gradients_tolerance(torch.float32)
    after = compare_gradients(ref2, hf2, TINY.vocab_size, tol)
    assert [r.tensor for r in records] == [r.tensor for r in after]
    assert all(r.passed for r in records) and len(records) == len(list(ref.parameters()))


def test_a_differing_gradient_fails_and_keeps_both_gradients(shared_pair: tuple[Any, Any]) -> None:
    ref, hf = shared_pair
    # Untie the reference's c_fc from HF's storage and change it: its gradient (and those upstream) differ.
    fc = ref.transformer.h[1].mlp.c_fc
    fc.weight = torch.nn.Parameter(fc.weight.detach().clone() * 3.0)
    idx, targets = gradient_batch(TINY)
    with pytest.raises(ParityFailure, match=r"\[grads\] \d+ of \d+ parameter gradients differ"):
        check_gradients(ref, hf, idx, targets, TINY.vocab_size)
    assert fc.weight.grad is not None and hf.transformer.h[1].mlp.c_fc.weight.grad is not None


# ------------------------------------------------------------------------------------------------------
# the streamed synthetic checkpoint


def test_streamed_safetensors_holds_the_seeded_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_synthetic_safetensors(path, TINY, seed=7)
    expected = synthetic_openai_weights(TINY, seed=7)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(expected)
        for name, t in expected.items():
            assert torch.equal(f.get_tensor(name), t), name
    again = tmp_path / "again.safetensors"
    write_synthetic_safetensors(again, TINY, seed=7)
    assert path.read_bytes() == again.read_bytes()


def test_checkpoint_is_generated_once_and_then_reused(tmp_path: Path) -> None:
    path, seconds = ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path)
    assert seconds is not None and seconds > 0  # generated now, not taken from somewhere else
    assert ensure_synthetic_checkpoint(TINY, "tiny", root=tmp_path) == (path, None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporaries left behind"


def test_memory_plan_is_the_targets() -> None:
    (target,) = resolve_targets("gpt2", "synthetic", "cpu", None)
    assert target.memory == plan_memory(target.config, target.dtype)
    assert not target.memory.share_weights and target.memory.estimated_peak_bytes > 2 * target.memory.param_bytes
    assert target.dtype_reason.startswith("CPU default for gpt2")
