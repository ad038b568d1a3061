"""What a check runs on: the implementation under test and Hugging Face's GPT-2, on one target.

A `Subject` loads each model once, lazily, and keeps what several checks share: the one forward + backward
of both models on the gradient batch (read by the logits, loss, grads and tied-gradient checks), and the
narrow twin. Every front end (the tests in parity/, the bisect command, the mutant catalog) builds a Subject
and hands it to the registry (parity/checks/registry.py). For sizes whose memory plan says so (gpt2-large and
gpt2-xl on their defaults), the implementation's parameters become views of Hugging Face's after a bitwise
check, so one copy of the weights serves both. At every GPT-2 size, checks that train, build fresh models,
sample over whole blocks or compare the logits of a full block run on the narrow twin (`full_size_extras`):
the same classes, one layer, few channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanogpt.schema import EMBEDDING, HEAD
from parity.core.compare import ParityFailure
from parity.core.errors import CannotTest, ImplementationError
from parity.foreign.impl import Implementation
from parity.foreign.load import LoadReport, load_implementation
from parity.numerics.forward import hf_logits
from parity.numerics.gradients import GradientRun, run_gradients
from parity.numerics.tie import is_tied, twin_config
from parity.subject.batches import gradient_batch
from parity.subject.loading import load_hf, load_reference, share_parameters
from parity.subject.memory import (
    FULL_SIZE_TRAINING_MAX_BYTES,
    TRAINING_BYTES_FACTOR,
    available_memory,
    format_bytes,
    param_bytes,
    release_free_memory,
)
from parity.subject.progress import phase
from parity.subject.targets import ParityTarget

# Loading and the shared forward + backward print a progress line from this size of weights on (gpt2 in
# float32 is 0.5 GB: seconds of silence; a tiny model's whole run takes less).
PROGRESS_MIN_BYTES = 100_000_000


def twin_clause(config: Any, why: str) -> str:
    """How a verdict says it ran on the narrow twin of config (a tie.twin_config), and why."""
    return f"on the narrow twin (1 layer, {config.n_embd} channels: {why})"


def on_twin(message: str, twin: Twin, check: str) -> str:
    """A verdict message tagged [check], saying that it was found on the narrow twin and why."""
    return message.replace(f"[{check}] ", f"[{check}] {twin_clause(twin.config, twin.why)}: ", 1)


@contextlib.contextmanager
def found_on(twin: Twin | None, check: str) -> Iterator[None]:
    """A FAIL or CANNOT-TEST tagged [check] raised inside says it was found on twin (no change without)."""
    if twin is None:
        yield
        return
    try:
        yield
    except ParityFailure as e:
        raise ParityFailure(on_twin(str(e), twin, check), e.records, e.profiles) from e
    except CannotTest as e:
        raise CannotTest(on_twin(str(e), twin, check)) from e


@dataclass
class Twin:
    """Implementation and Hugging Face's model at a narrow config (tie.twin_config), from one checkpoint."""

    config: Any
    model: nn.Module
    hf: Any
    why: str  # why the check runs on the twin rather than the loaded models
    checkpoint: Path


@dataclass
class Subject:
    """The implementation under test on one target; both models are loaded once, on first use."""

    impl: Implementation
    target: ParityTarget
    tied_decay: bool = True  # the expected answer of decay-groups: is the tied matrix weight-decayed?
    reference_loader: bool = False  # load through GPT.from_pretrained (the reference's own path)
    loader: str | None = None  # --loader MODULE:FUNCTION: own-loader runs it (default: GPT.from_pretrained)
    # Per-module difference profiles of the logits (two hooked forwards of both models each): only a report
    # keeps them, so the front ends ask for them only when they write one.
    profiles: bool = True
    report: LoadReport | None = None
    unshared: list[str] = field(default_factory=list)  # parameters kept apart although the plan shares
    diagnoses: dict[str, str] = field(default_factory=dict)  # first-divergence diagnosis per batch label
    logits_mode: str | None = None  # how the adapted class reads every position's logits, once loaded
    _model: nn.Module | None = field(default=None, repr=False)
    _load_error: ImplementationError | None = field(default=None, repr=False)
    _built: nn.Module | ImplementationError | None = field(default=None, repr=False)
    _hf: Any = field(default=None, repr=False)
    _gradient_run: GradientRun | None = field(default=None, repr=False)
    _twin: Twin | None = field(default=None, repr=False)

    @property
    def config(self) -> Any:
        """The target's architecture (nanogpt.model.GPTConfig)."""
        return self.target.config

    @property
    def label(self) -> str:
        """How messages name the implementation."""
        return self.impl.label

    @property
    def device(self) -> str:
        """The target's device."""
        return self.target.device

    @property
    def dtype(self) -> torch.dtype:
        """The target's dtype."""
        return self.target.dtype

    def checkpoint(self) -> Path:
        """The target's checkpoint directory (a synthetic one is generated on first use)."""
        return self.target.ensure_checkpoint()

    def model(self) -> nn.Module:
        """The implementation with the target's weights, in eval mode (a load failure is remembered)."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            if self.target.device == "cuda":  # parity is about the function: no TF32
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            try:
                checkpoint = self.checkpoint()  # generated first, with its own progress line
                with self._progress(f"loading {self.label} ({self.target.name}, {self.target.dtype_name})"):
                    if self.reference_loader:
                        model = load_reference(checkpoint, self.dtype, self.device)
                    else:
                        model, self.report = load_implementation(
                            self.impl, checkpoint, self.dtype, self.device
                        )
            except ImplementationError as e:
                self._load_error = e
                raise
            if self.shares_weights:
                self.unshared = share_parameters(model, self.hf(), source_is_hf=True)
            elif is_tied(model):
                # The tied matrix has one layout in both models, so sharing it costs the independent plan
                # nothing of its strength and saves a V x C matrix for the whole run (0.3 GB at gpt2).
                share_parameters(model, self.hf(), source_is_hf=True, roles=(EMBEDDING, HEAD))
            self._model = model
            self.logits_mode = type(model).__dict__.get("_parity_logits_mode")
        return self._model

    @property
    def load_error(self) -> ImplementationError | None:
        """Why `model()` could not load the implementation, once it has tried; else None."""
        return self._load_error

    def built_model(self) -> nn.Module:
        """The implementation built by its own __init__ at the target's config, weights not loaded (seed 0).

        What the structure checks judge when the weights cannot be loaded: the tie is made by __init__, not by
        the checkpoint. A build failure is remembered and raised again, as ImplementationError.
        """
        if self._built is None:
            torch.manual_seed(0)
            try:
                self._built = self.impl.build(self.config)[0].to(self.dtype).to(self.device).eval()
            except ImplementationError as e:
                self._built = e
        if isinstance(self._built, ImplementationError):
            raise self._built
        return self._built

    @property
    def loaded_model(self) -> nn.Module | None:
        """The implementation's model if `model()` has loaded it, else None (never loads anything)."""
        return self._model

    def hf(self) -> Any:
        """Hugging Face's GPT2LMHeadModel with tie_word_embeddings=True, from the same checkpoint."""
        if self._hf is None:
            with self._progress(
                f"loading Hugging Face's GPT2LMHeadModel ({self.target.name}, {self.target.dtype_name})"
            ):
                self._hf = load_hf(
                    self.checkpoint(), self.dtype, self.device, True, activation=self.target.hf_activation
                )
        return self._hf

    @property
    def shares_weights(self) -> bool:
        """True when the implementation's parameters are views of Hugging Face's (the memory plan)."""
        return self.target.memory.share_weights

    def gradient_run(self) -> GradientRun:
        """One forward + backward of both models on the gradient batch, shared by four checks."""
        if self._gradient_run is None:
            model, hf = self.model(), self.hf()
            idx, targets = (t.to(self.device) for t in gradient_batch(self.config))
            with (
                clean_grads(model, hf),
                self._progress(f"{self.target.name}: forward + backward of both models"),
            ):
                self._gradient_run = run_gradients(
                    model,
                    hf,
                    idx,
                    targets,
                    self.config.output_vocab_size,
                    # tied-gradient's "actual", where it runs on the loaded models
                    keep_tied_gradient=self.full_size_extras() is None,
                )
            release_free_memory()  # the backward passes' freed activations, before the next check's peak
        return self._gradient_run

    def hf_gradient_logits(self) -> torch.Tensor:
        """Hugging Face's logits of the gradient batch: the shared forward + backward's, when it has run (its
        forward is the same function of the same weights), else a forward of their own."""
        if self._gradient_run is not None and self._gradient_run.hf_logits is not None:
            return self._gradient_run.hf_logits
        idx = gradient_batch(self.config)[0].to(self.device)
        with torch.no_grad():
            return hf_logits(self.hf(), idx)

    def _progress(self, label: str) -> contextlib.AbstractContextManager[Any]:
        """A progress line for work on a model of PROGRESS_MIN_BYTES or more (small ones take no time)."""
        big = param_bytes(self.config, self.dtype) >= PROGRESS_MIN_BYTES
        return phase(label) if big else contextlib.nullcontext()

    def full_size_extras(self) -> str | None:
        """None when checks may build fresh models or run passes beyond the shared ones at full size, else why
        they run on the narrow twin: the memory plan trains full-size copies only of models up to
        FULL_SIZE_TRAINING_MAX_BYTES of training state, and the same models are the ones whose extra
        full-block passes take no time (gpt2's sampled generation took 30 s at full size)."""
        if self.target.memory.train_full_size:
            return None
        return (
            f"{self.target.name} has {format_bytes(param_bytes(self.config, self.dtype))} of parameters; "
            "the memory plan keeps fresh models and long extra passes to the narrow twin"
        )

    def extras_twin(self) -> Twin | None:
        """The narrow twin where the memory plan keeps long extra passes there (`full_size_extras`) and the
        implementation can be built narrow, else None: the pass runs on the loaded models."""
        why = self.full_size_extras()
        if why is None:
            return None
        with contextlib.suppress(ImplementationError):  # e.g. a config it cannot narrow
            return self.twin(why)
        return None

    def free_for_another_model(self) -> None:
        """Drop the loaded models a check no longer needs before it builds another full-size one.

        The implementation's model goes (and the gradient run with it); Hugging Face's too when the memory
        plan shares its weights, for then it is the only copy that holds memory. Either is loaded again if
        asked for.
        """
        self._model = self._gradient_run = None
        if self.shares_weights:
            self._hf = None
        self.diagnoses.clear()

    def training_fits(self) -> str | None:
        """None when training copies of both loaded models fits in memory, else why the twin is used."""
        if self.shares_weights:
            return "the loaded models share one copy of the weights (memory plan), so they are not trained"
        need = TRAINING_BYTES_FACTOR * param_bytes(self.config, self.dtype)
        if not self.target.memory.train_full_size:
            return (
                f"training copies of both models would take ~{format_bytes(need)}, above the memory plan's "
                f"{format_bytes(FULL_SIZE_TRAINING_MAX_BYTES)} for them"
            )
        available = available_memory()
        if self.device == "cpu" and available is not None and need > available.bytes:
            return (
                f"training copies of both models needs ~{format_bytes(need)} more, "
                f"{format_bytes(available.bytes)} is available"
            )
        return None

    def twin(self, why: str) -> Twin:
        """Implementation and Hugging Face's model at the narrow twin config, from a synthetic checkpoint."""
        if self._twin is None:
            config = twin_config(self.config)
            checkpoint = self.target.ensure_twin_checkpoint()
            model, _ = load_implementation(self.impl, checkpoint, self.dtype, self.device)
            hf = load_hf(checkpoint, self.dtype, self.device, True, activation=self.target.hf_activation)
            self._twin = Twin(config, model, hf, why, checkpoint)
        self._twin.why = why
        return self._twin

    def fresh_implementation(self, checkpoint: Path | None = None) -> nn.Module:
        """Another copy of the implementation with the checkpoint's weights, built by its own __init__.

        Not copy.deepcopy: code that binds sub-modules in closures (a block's `self.mlpf = lambda x: ...`)
        would have its copy call the original's modules, and train them.
        """
        if checkpoint is None and self.reference_loader:
            return load_reference(self.checkpoint(), self.dtype, self.device)
        return load_implementation(self.impl, checkpoint or self.checkpoint(), self.dtype, self.device)[0]

    def release(self) -> None:
        """Drop both models and everything computed from them."""
        self._model = self._hf = self._gradient_run = self._twin = self._built = None
        self.diagnoses.clear()


@contextlib.contextmanager
def clean_grads(*models: nn.Module) -> Any:
    """The models start and end the block without gradients."""
    for m in models:
        m.zero_grad(set_to_none=True)
    try:
        yield
    finally:
        for m in models:
            m.zero_grad(set_to_none=True)
