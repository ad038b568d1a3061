"""Gates for torch.compile on tied-embedding models: warnings, graph breaks and recompiles.

When nanoGPT tied its embeddings, torch.compile began printing "functional_call was passed multiple values
for tied weights" and nobody could tell whether it mattered. This module turns such signals into checks:
`capture_compile_warnings` records every Python warning and every torch (and transformers) log record at
WARNING or above while a block runs; `tied_weight_warnings` picks out those matching TIED_WEIGHT_PATTERNS,
the one list of what fails the gate; `run_compiled_training` compiles a model and trains it a few steps
under that capture while counting compiled graphs; `compare_step_with_eager` takes one step with the
compiled model and its eager twin for the numerics checks; `count_graph_breaks` and `GraphCounter` count graph
breaks and the forward/backward graphs a compile produces. Plain functions: the tests in this directory
decide what to assert.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

# What fails the warning gate: a warning or log record that mentions tied, shared or duplicate parameters,
# or functional_call. Each entry is (regex, why); matching is case-insensitive. Patterns name parameters or
# weights explicitly, so unrelated uses of the words ("shared memory", "duplicate guard") do not match.
TIED_WEIGHT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        r"functional_call",
        "torch.func.functional_call / stateless reparametrization, where the original nanoGPT warning "
        "came from: AOT autograd swaps parameters in through it, and tied ones can be swapped twice",
    ),
    (
        r"multiple values for",
        "the wording of the original warning; any API handed one tied tensor under two names",
    ),
    (
        r"\b(un)?tied\b|\btying\b|\btie_(weights|word_embeddings)\b",
        "tied weights named directly, including untying (a tie silently broken is the failure we fear)",
    ),
    (
        r"\bshared (parameter|weight|tensor|embedding)s?\b|\b(parameter|weight)s? (is|are) shared\b",
        "shared parameters: the same Parameter reachable under two module paths",
    ),
    (
        r"\bduplicated? (parameter|weight)s?\b|\b(parameter|weight)s?\b.{0,60}\bmore than once\b",
        "duplicate parameters: a tied matrix counted, registered or updated twice",
    ),
)

# Loggers whose records the capture sees (with all their descendants). transformers logs its own warnings
# (not through Python's warnings module), so an HF model's compile is only fully visible with it.
CAPTURED_LOGGERS: tuple[str, ...] = ("torch", "transformers")


@dataclass(frozen=True)
class CapturedWarning:
    """One Python warning or log record seen during a compiled run."""

    source: str  # "warnings" or the name of the logger that emitted the record
    kind: str  # the warning category (UserWarning, ...) or the log level (WARNING, ERROR, ...)
    message: str
    location: str  # file:line

    def __str__(self) -> str:
        return f"[{self.source}] {self.kind}: {self.message} ({self.location})"


def tied_weight_warnings(captured: list[CapturedWarning]) -> list[CapturedWarning]:
    """The captured warnings that match any of TIED_WEIGHT_PATTERNS: the ones that fail the gate."""
    patterns = [re.compile(regex, re.IGNORECASE) for regex, _ in TIED_WEIGHT_PATTERNS]
    return [w for w in captured if any(p.search(w.message) for p in patterns)]


def summarize_warnings(captured: list[CapturedWarning]) -> list[str]:
    """One line per distinct warning, in first-seen order, with a repeat count where there is one."""
    counts = Counter(str(w) for w in captured)
    return [line if n == 1 else f"{line} (x{n})" for line, n in counts.items()]


class _ListHandler(logging.Handler):
    """A logging handler that appends every record it sees to a list, as CapturedWarning."""

    def __init__(self, sink: list[CapturedWarning]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(
            CapturedWarning(
                record.name, record.levelname, record.getMessage(), f"{record.pathname}:{record.lineno}"
            )
        )


def _capture_points(root: str) -> list[logging.Logger]:
    """The loggers to attach to so that every record under `root` reaches exactly one handler.

    A handler on `root` alone is not enough: torch configures its subsystem loggers (torch._dynamo,
    torch._inductor, torch._functorch.aot_autograd, ...) with their own handler and propagate=False, so
    their records never reach "torch". A record travels up until the first non-propagating logger, so
    attaching to `root` and to every non-propagating descendant sees each record once.
    """
    loggers = [logging.getLogger(root)]
    for name, candidate in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith(root + ".") and isinstance(candidate, logging.Logger) and not candidate.propagate:
            loggers.append(candidate)
    return loggers


@contextmanager
def capture_compile_warnings() -> Iterator[list[CapturedWarning]]:
    """Record every Python warning and torch/transformers log record (WARNING and up) inside the block.

    Python warnings are recorded with simplefilter("always"), so a warning already shown once in this
    process (the default filter's "once per location") is recorded again. The list fills as the block runs
    and is complete when the block exits; logger levels and handlers are restored afterwards.
    """
    captured: list[CapturedWarning] = []
    handler = _ListHandler(captured)
    points = [logger for root in CAPTURED_LOGGERS for logger in _capture_points(root)]
    roots = [logging.getLogger(root) for root in CAPTURED_LOGGERS]
    saved_levels = [root.level for root in roots]
    for root in roots:
        if root.getEffectiveLevel() > logging.WARNING:
            root.setLevel(logging.WARNING)
    for logger in points:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            try:
                yield captured
            finally:  # also when the block fails: the warnings before the failure may explain it
                captured.extend(
                    CapturedWarning(
                        "warnings", r.category.__name__, str(r.message), f"{r.filename}:{r.lineno}"
                    )
                    for r in records
                )
    finally:
        for logger in points:
            logger.removeHandler(handler)
        for root, level in zip(roots, saved_levels, strict=True):
            root.setLevel(level)


@contextmanager
def fresh_compile() -> Iterator[None]:
    """Reset dynamo and bypass the FX-graph and AOT-autograd caches, so a compile really traces again.

    A cache hit skips AOT autograd, the stage that once printed nanoGPT's tied-weight warning, so a gate
    run with warm caches could pass without looking. (Compiled C++ kernels stay cached: building them
    emits no warnings of interest and costs most of a cold compile on CPU.)
    """
    torch._dynamo.reset()
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (a monotone counter; compare differences)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


# (model, idx, targets) -> (logits, loss): how to run one model family on a batch.
Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# model -> optimizer over its parameters (each tied matrix once).
MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class CompiledTrainingRun:
    """What a few compiled training steps left behind: the model, the warnings, the graphs per step."""

    compiled: nn.Module  # the torch.compile wrapper; the trained module is compiled._orig_mod
    warnings: list[CapturedWarning]
    graphs_per_step: list[int] = field(default_factory=list)  # graphs compiled during step 1, 2, ...

    @property
    def recompiles(self) -> int:
        """Graphs compiled after the first step: each one is a recompile (a guard failed)."""
        return sum(self.graphs_per_step[1:])


def run_compiled_training(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    forward: Forward,
    make_optimizer: MakeOptimizer,
    steps: int = 4,
    **compile_kwargs: Any,
) -> CompiledTrainingRun:
    """Compile `model` afresh, train it `steps` steps, capture warnings and count graphs per step.

    Each step is forward, backward and an optimizer step that updates the weights, the cycle in which a
    tied-weight problem would show up (in AOT autograd at the first backward, or as a recompile once the
    weights change).
    """
    x, y = batch
    with fresh_compile(), capture_compile_warnings() as captured:
        compiled = torch.compile(model, **compile_kwargs)
        optimizer = make_optimizer(compiled)
        run = CompiledTrainingRun(compiled=compiled, warnings=captured)
        for _ in range(steps):
            before = compiled_graph_count()
            _, loss = forward(compiled, x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.graphs_per_step.append(compiled_graph_count() - before)
    return run


@dataclass
class StepResult:
    """One training step of one model, detached: outputs, gradients, weights after the step."""

    logits: torch.Tensor
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]  # every parameter name, tied aliases included (remove_duplicate=False)
    params_after_step: dict[str, torch.Tensor]
    logits_after_step: torch.Tensor  # a second forward: stale weights inside a compiled graph show here


@dataclass
class EagerComparison:
    """The same step taken by a compiled model and by its eager twin with identical weights."""

    eager: StepResult
    compiled: StepResult
    graphs_compiled: int  # graphs the compiled side needed; 0 means it reused the training graph


def _sgd_step(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], forward: Forward, lr: float
) -> StepResult:
    """Forward, backward, one SGD step, forward again; everything detached and cloned."""
    x, y = batch
    named = dict(getattr(model, "_orig_mod", model).named_parameters(remove_duplicate=False))
    model.zero_grad(set_to_none=True)
    logits, loss = forward(model, x, y)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in named.items()}
    torch.optim.SGD(model.parameters(), lr=lr).step()
    params = {name: p.detach().clone() for name, p in named.items()}
    # Grad mode on, as in training, so the compiled side reuses its training graph rather than compiling
    # an inference one.
    logits_after, _ = forward(model, x, y)
    model.zero_grad(set_to_none=True)
    return StepResult(logits.detach(), loss.detach(), grads, params, logits_after.detach())


def compare_step_with_eager(
    compiled: nn.Module,
    eager: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    forward: Forward,
    lr: float = 0.1,
) -> EagerComparison:
    """Take one SGD step with a compiled model and with an eager copy of it; return both sides.

    SGD, not AdamW: its step is linear in the gradients, so a parameter tolerance follows from the
    gradient tolerance. AdamW's first step is lr * g / (|g| + eps), about lr * sign(g), which turns
    float32 noise on a gradient that is zero in exact arithmetic (GPT-2's key biases) into a full step.
    """
    eager_result = _sgd_step(eager, batch, forward, lr)
    before = compiled_graph_count()
    compiled_result = _sgd_step(compiled, batch, forward, lr)
    return EagerComparison(eager_result, compiled_result, compiled_graph_count() - before)


@dataclass(frozen=True)
class GraphBreaks:
    """torch._dynamo.explain's verdict on one call: how many graphs, how many breaks and why."""

    graph_count: int
    graph_break_count: int
    reasons: list[str]


def count_graph_breaks(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GraphBreaks:
    """Trace fn(*args, **kwargs) with torch._dynamo.explain (no compile backend: seconds, not minutes).

    explain resets dynamo before and after, so models compiled earlier in the process compile again.
    """
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = [f"{r.reason} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons]
    return GraphBreaks(explained.graph_count, explained.graph_break_count, reasons)


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them without optimizing.

    dynamo hands it one graph per compiled region (more than one means a graph break, another one later
    means a recompile); AOT autograd then splits each into a forward graph and, at the first backward, a
    backward graph. The counts say whether forward+backward stayed one graph each way.
    """

    def __init__(self) -> None:
        self.dynamo_graphs = 0
        self.forward_graphs = 0
        self.backward_graphs = 0
        self._aot = aot_autograd(fw_compiler=self._count_forward, bw_compiler=self._count_backward)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        self.dynamo_graphs += 1
        return self._aot(gm, example_inputs)

    def _count_forward(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        self.forward_graphs += 1
        return make_boxed_func(gm.forward)

    def _count_backward(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        self.backward_graphs += 1
        return make_boxed_func(gm.forward)
