"""Sample text from a trained model: `python -m nanogpt.sample [CONFIG] [--key=value ...]`.

The model comes from one of our training checkpoints (`--init_from=resume` reads `out_dir/ckpt.pt`, or
pass the path of a `.pt` file) or from a Hugging Face GPT-2 (`gpt2`..`gpt2-xl` from the local cache, or a
checkpoint directory). The prompt is `--start=TEXT` or `--start=FILE:path`; the samples are printed one
after another, separated by a rule. With the same seed, the same samples come out. Every sample is kept
until all are printed, so `num_samples x max_new_tokens` is bounded by the machine's memory before anything
is loaded, as the trainer bounds its batch (nanogpt/resources.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt.checkpoint import CHECKPOINT_FILE, build_model, load_checkpoint
from nanogpt.config import DTYPES, MAX_SEED, ConfigError, Problems, option, parse_config, run_cli
from nanogpt.model import GPT, GPT2_SIZES
from nanogpt.resources import GIB, machine_memory

SEPARATOR = "---------------"
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 100.0
MAX_PROMPT_BYTES = 1 << 20
# Bytes each generated token takes at least: while one sample is generated, its id in the int64 sequence
# that generate grows (torch.cat holds the old and the new one) and in decode's list; in every sample's
# text kept until printed, at least one byte.
TOKEN_BYTES_WHILE_GENERATING = 16
TOKEN_BYTES_KEPT = 1


def sampling_bytes_lower_bound(num_samples: int, max_new_tokens: int) -> int:
    """At least this many bytes: one sample's token ids while it is generated and every sample's text."""
    return TOKEN_BYTES_WHILE_GENERATING * max_new_tokens + TOKEN_BYTES_KEPT * num_samples * max_new_tokens


@dataclass
class SampleConfig:
    """Options of `python -m nanogpt.sample`."""

    init_from: str = option(
        "resume", "resume (out_dir/ckpt.pt), a checkpoint .pt file, gpt2..gpt2-xl, or an HF GPT-2 directory"
    )
    out_dir: str = option("out", "where init_from=resume finds ckpt.pt")
    start: str = option("\n", "the prompt, or FILE:path to read it from a file; empty: <|endoftext|>")
    num_samples: int = option(3, "how many samples")
    max_new_tokens: int = option(200, "tokens generated per sample")
    temperature: float = option(
        0.8, "1.0 keeps the model's distribution, lower is more conservative, 0 greedy"
    )
    top_k: int | None = option(200, "sample among the k most likely tokens only; none: all")
    seed: int = option(1337, "seed of the sampling generator")
    device: str = option("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    dtype: str = option(
        "auto", "auto (bfloat16 autocast on CUDA, float32 on CPU), or " + ", ".join(DTYPES[1:])
    )

    def validate(self) -> None:
        """Check ranges and choices before loading anything."""
        p = Problems()
        p.at_least(self, "num_samples", 1)
        p.at_least(self, "max_new_tokens", 0)
        p.at_least(self, "temperature", 0.0)
        # logits / temperature must stay finite (1e-300 overflows to Inf, and softmax of Inf is NaN)
        p.check(
            self.temperature == 0.0 or self.temperature >= MIN_TEMPERATURE,
            "temperature",
            f"{self.temperature} is too small to sample with; use 0 for greedy or >= {MIN_TEMPERATURE}",
        )
        p.at_most(self, "temperature", MAX_TEMPERATURE)
        p.at_least(self, "seed", 0)
        p.at_most(self, "seed", MAX_SEED)
        if self.top_k is not None:
            p.at_least(self, "top_k", 1)
        p.choice(self, "dtype", DTYPES)
        p.device(self, "device")
        p.raise_if_any()
        total = machine_memory("cpu")  # the samples are decoded and kept in host memory
        need = sampling_bytes_lower_bound(self.num_samples, self.max_new_tokens)
        if total is not None and need > total:
            raise ConfigError(
                f"num_samples={self.num_samples}, max_new_tokens={self.max_new_tokens}: sampling holds at "
                f"least {need / GIB:,.1f} GiB, more than the {total / GIB:,.1f} GiB this machine has; ask "
                "for fewer or shorter samples"
            )


def load_model(init_from: str, out_dir: str = "out") -> GPT:
    """The model named by init_from (see SampleConfig.init_from), on CPU, in eval mode."""
    if init_from == "resume":
        path = Path(out_dir).expanduser() / CHECKPOINT_FILE
        model = build_model(load_checkpoint(path, require_training_state=False))
    elif init_from.endswith(".pt") or Path(init_from).is_file():
        model = build_model(load_checkpoint(init_from, require_training_state=False))
    elif init_from in GPT2_SIZES or Path(init_from).is_dir():
        model = GPT.from_pretrained(init_from)
    else:
        raise ConfigError(
            f"init_from: {init_from!r} is not resume, a checkpoint file, a GPT-2 size "
            f"({', '.join(GPT2_SIZES)}) or an existing directory"
        )
    return model.eval()


def read_prompt(start: str) -> str:
    """The prompt text: start itself, or the contents of the file named by FILE:path."""
    if start.startswith("FILE:"):
        path = Path(start[5:]).expanduser()
        if not path.exists():
            raise ConfigError(f"start: prompt file {path} not found")
        if not path.is_file():  # a FIFO or device would block or never end
            raise ConfigError(f"start: prompt file {path} is not a regular file")
        if path.stat().st_size > MAX_PROMPT_BYTES:
            raise ConfigError(
                f"start: prompt file {path} is {path.stat().st_size:,} bytes; the model sees at most its "
                f"last block of tokens, so pass under {MAX_PROMPT_BYTES // 2**20} MiB"
            )
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"start: prompt file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8"
            ) from None
        except OSError as e:
            raise ConfigError(f"start: cannot read prompt file {path} ({e.strerror or e})") from None
    return start


def sample(cfg: SampleConfig, model: GPT | None = None) -> list[str]:
    """Generate cfg.num_samples continuations of the prompt; returns the decoded texts (prompt included)."""
    from nanogpt.tokenizer import ENDOFTEXT_ID, decode, encode

    cfg.validate()
    name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use --device=cpu")
    device = torch.device(name)
    if cfg.dtype in ("bfloat16", "float16") and device.type != "cuda":
        raise ConfigError(f"dtype: {cfg.dtype} autocast is for CUDA; on CPU use --dtype=float32")
    prompt = read_prompt(cfg.start)
    if model is None:
        model = load_model(cfg.init_from, cfg.out_dir)
    model.to(device)
    if cfg.dtype == "float64":
        model.double()
    autocast_dtype = None
    if device.type == "cuda" and cfg.dtype in ("auto", "bfloat16", "float16"):
        bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and torch.cuda.is_bf16_supported())
        autocast_dtype = torch.bfloat16 if bf16 else torch.float16
    ids = encode(prompt) if prompt else [ENDOFTEXT_ID]
    if max(ids) >= model.config.output_vocab_size:
        raise ConfigError(
            f"start: the prompt has token ids up to {max(ids)}, beyond the model's "
            f"{model.config.output_vocab_size} tokens; this model was not trained with the GPT-2 tokenizer"
        )
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    texts = []
    with autocast:
        for _ in range(cfg.num_samples):
            y = model.generate(
                x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, generator=generator
            )
            texts.append(decode(y[0].tolist()))
    return texts


def main(argv: list[str]) -> None:
    """`python -m nanogpt.sample`: print the samples."""
    cfg, _ = parse_config(SampleConfig, argv, prog="nanogpt.sample")
    for text in sample(cfg):
        print(text)
        print(SEPARATOR)


if __name__ == "__main__":
    run_cli(main, None, "nanogpt.sample")
