"""The trainer's settings: `TrainConfig`, the typed dataclass behind `python -m nanogpt.train`'s options.

Each field carries its default and its help line (`option`), and `nanogpt.config.parse_config` builds the
command line from these fields: one `--key` per field, typed by the field's annotation. `validate` checks
every range and choice and names each bad key, before any data, model or checkpoint is touched.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass

from nanogpt.config import DEVICES_HELP, DTYPES, MAX_SEED, Problems, option

MAX_LEARNING_RATE = 1.0
MAX_EVAL_ITERS = 1_000_000
MAX_WEIGHT_DECAY = 10.0


@dataclass
class TrainConfig:
    """Everything `python -m nanogpt.train` can be told; defaults follow upstream nanoGPT's GPT-2 recipe."""

    # I/O
    out_dir: str = option("out", "directory for ckpt.pt (created if missing)")
    data_dir: str = option(
        "data", "directory made by `python -m nanogpt.data` (train.bin, val.bin, meta.json)"
    )
    init_from: str = option(
        "scratch", "scratch, resume (from out_dir/ckpt.pt), gpt2..gpt2-xl, or a Hugging Face GPT-2 directory"
    )
    eval_interval: int = option(250, "evaluate (and maybe checkpoint) every this many iterations")
    eval_iters: int = option(20, "batches per split for each loss estimate")
    log_interval: int = option(10, "print a log line every this many iterations")
    eval_only: bool = option(False, "evaluate once and exit")
    always_save_checkpoint: bool = option(
        False, "checkpoint at every evaluation, not only on a new best val loss"
    )
    progress: bool | None = option(None, "progress display on stderr; none means: when stderr is a terminal")
    # data
    batch_size: int = option(12, "micro-batch size per process")
    block_size: int = option(1024, "context length of the training windows")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step (per process)")
    # model (ignored for resume and pretrained inits, which bring their own architecture)
    n_layer: int = option(12, "transformer blocks")
    n_head: int = option(12, "attention heads")
    n_embd: int = option(768, "embedding width")
    dropout: float = option(0.0, "dropout probability (0 for pre-training, 0.1+ for fine-tuning)")
    bias: bool = option(True, "biases in Linears and LayerNorms, like GPT-2")
    vocab_size: int | None = option(None, "embedding rows; none: the dataset's vocabulary rounded up to 64")
    # AdamW
    learning_rate: float = option(6e-4, "peak learning rate")
    max_iters: int = option(5000, "optimizer steps in total")
    weight_decay: float = option(0.1, "AdamW weight decay of the >= 2-D parameters")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables")
    # learning-rate schedule
    decay_lr: bool = option(True, "linear warmup then cosine decay; false: constant learning_rate")
    warmup_iters: int = option(100, "linear warmup steps")
    lr_decay_iters: int | None = option(None, "step where the cosine reaches min_lr; none: max_iters")
    min_lr: float | None = option(None, "final learning rate; none: learning_rate / 10")
    # system
    device: str = option("auto", DEVICES_HELP)
    dtype: str = option(
        "auto", "auto (bfloat16/float16 autocast on CUDA, float32 on CPU) or " + ", ".join(DTYPES[1:])
    )
    compile: bool = option(False, "torch.compile the model (the first step then takes a while)")
    seed: int = option(1337, "seed of the init, the data sampler and dropout")
    parallel: str = option("ddp", "under torchrun: ddp (replicated) or fsdp (FSDP2 fully_shard)")
    backend: str = option("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo")

    # The architecture keys: they must agree with a checkpoint or pretrained model when given explicitly.
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "n_layer",
        "n_head",
        "n_embd",
        "bias",
        "vocab_size",
        "block_size",
    )

    @property
    def decay_iters(self) -> int:
        """The step where the cosine schedule reaches min_lr."""
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    @property
    def final_lr(self) -> float:
        """The learning rate at the end of the cosine schedule."""
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr

    def validate(self, only: Sequence[str] | None = None) -> None:
        """Check every range and choice (or only those of the keys in only); ConfigError names bad keys."""
        p = Problems()
        for key in ("batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd"):
            p.at_least(self, key, 1)
        for key in ("eval_interval", "eval_iters", "log_interval"):
            p.at_least(self, key, 1)
        for key in ("max_iters", "warmup_iters", "seed"):
            p.at_least(self, key, 0)
        for key in ("learning_rate", "weight_decay", "grad_clip"):
            p.at_least(self, key, 0.0)
        # AdamW moves each parameter by about learning_rate per step: above 1 a run can only diverge.
        p.at_most(self, "learning_rate", MAX_LEARNING_RATE, "AdamW diverges there; GPT-2 used 6e-4")
        p.at_most(self, "weight_decay", MAX_WEIGHT_DECAY)
        p.at_most(self, "seed", MAX_SEED)
        p.at_most(self, "eval_iters", MAX_EVAL_ITERS, "each evaluation draws this many batches per split")
        if self.vocab_size is not None:
            p.at_least(self, "vocab_size", 1)
        if self.lr_decay_iters is not None:
            p.at_least(self, "lr_decay_iters", 0)
        if self.min_lr is not None:
            p.at_least(self, "min_lr", 0.0)
            p.at_most(self, "min_lr", MAX_LEARNING_RATE)
            p.check(
                self.min_lr <= self.learning_rate,
                "min_lr",
                f"{self.min_lr} exceeds learning_rate ({self.learning_rate})",
            )
        p.check(
            self.n_embd % max(self.n_head, 1) == 0,
            "n_embd",
            f"{self.n_embd} is not divisible by n_head ({self.n_head})",
        )
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} is not in [0, 1)")
        for key in ("beta1", "beta2"):
            p.check(0.0 <= getattr(self, key) < 1.0, key, f"{getattr(self, key)} is not in [0, 1)")
        if self.decay_lr:
            p.check(
                self.warmup_iters <= self.decay_iters,
                "warmup_iters",
                f"{self.warmup_iters} exceeds lr_decay_iters ({self.decay_iters}); lower --warmup_iters",
            )
        p.choice(self, "dtype", DTYPES)
        p.choice(self, "parallel", ("ddp", "fsdp"))
        p.choice(self, "backend", ("auto", "nccl", "gloo"))
        p.device(self, "device")
        p.check(
            bool(self.init_from), "init_from", "is empty; use scratch, resume, a GPT-2 size or a directory"
        )
        p.raise_if_any(only)
