"""How the parity suite scales from gpt2 to gpt2-xl on this machine: peak memory and wall time per size.

    python -m benchmarks.parity_scaling --models gpt2 gpt2-medium gpt2-large gpt2-xl

For each size, in separate child processes (so that each peak resident set size is that step's alone):
1. the synthetic checkpoint is generated, or found in the cache ($NANOGPT_PARITY_CACHE);
2. the whole parity suite runs, `pytest parity/ --model SIZE --weights synthetic`, in the size's default
   dtype; its wall time and peak RSS are measured;
3. the yardstick: one forward + backward of Hugging Face's GPT2LMHeadModel, in the same dtype, on the
   largest batch the suite runs (the full block, 1 x block_size tokens), timed after a warm-up forward
   that pages the weights in. The suite runs that batch forward only, and
   forward + backward only on 2 x 64 tokens, but all its batches together are about 1.5 such passes of
   model compute; loading, conversion and comparison are overhead on top.
The table reports peak RSS / parameter bytes (target: <= 2.5 x the float32 bytes of one
model for gpt2-xl) and wall / yardstick (target: <= 3). Before each step the estimate of its peak is
compared with the memory available now; a step that would not fit is skipped and says so (--force runs
it anyway). Nothing here is a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanogpt.hf import config_from_hf
from nanogpt.schema import param_count
from parity.subject.memory import BASE_BYTES, available_memory, format_bytes
from parity.subject.targets import ParityTarget, resolve_targets

# Activation memory of Hugging Face's GPT-2 forward + backward, in elements per (layer x token x channel)
# saved for backward: its python GELU keeps several 4C-wide intermediates. Measured at most 32.3 (gpt2-xl;
# docs/measurements.md); rounded up, it decides whether the yardstick step may start.
HF_ACTIVATION_FACTOR = 36
REPO_ROOT = Path(__file__).resolve().parents[1]
# Passes of the yardstick; the first is reported. Like every pass of the suite, it allocates its
# activations afresh (a second pass in the same process reuses freed memory and runs faster);
# --yardstick-repeats shows the spread, up to 30% between runs on a shared machine.
YARDSTICK_REPEATS = 1


@dataclass
class Step:
    """One child process: wall seconds, peak RSS bytes, exit code, and what it printed last."""

    seconds: float
    peak_rss: int
    returncode: int
    tail: str = ""


@dataclass
class Row:
    """One size's measurements."""

    model: str
    dtype: str
    storage: str
    param_bytes: int
    param_bytes_fp32: int
    estimated_peak: int
    generation: str = ""
    suite: Step | None = None
    yardstick: Step | None = None
    yardstick_seconds: float | None = None  # the timed forward + backward alone
    outcome: str = ""
    notes: list[str] = field(default_factory=list)


def run_child(argv: list[str], log: Path) -> Step:
    """Run argv with output to log; return its wall time and its own peak RSS (os.wait4's rusage)."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    return Step(seconds, usage.ru_maxrss * 1024, proc.returncode, tail[0] if tail else "")


def fits(estimate: int, force: bool, what: str, notes: list[str]) -> bool:
    """Whether a step estimated at `estimate` bytes may start now; note why not."""
    available = available_memory()
    if force or available is None or estimate <= available.bytes:
        return True
    notes.append(
        f"{what} skipped: needs about {format_bytes(estimate)}, {format_bytes(available.bytes)} available "
        f"({available.source}); rerun when memory is free, or with --force"
    )
    return False


def yardstick_estimate(t: ParityTarget) -> int:
    """Peak bytes of one HF forward + backward on the full block: weights + saved activations + logits."""
    c = t.config
    size = t.dtype.itemsize
    activations = HF_ACTIVATION_FACTOR * c.n_layer * c.block_size * c.n_embd * size
    logits = 4 * c.block_size * c.output_vocab_size * size
    return t.memory.param_bytes + activations + logits + BASE_BYTES


def yardstick(model: str, checkpoint: str, dtype: str, repeats: int = YARDSTICK_REPEATS) -> None:
    """Child process: time HF forward + backward on the full-block batch; print the seconds as JSON."""
    import torch

    from parity.numerics.forward import hf_logits, loss_of
    from parity.subject.batches import targets_for, token_batch
    from parity.subject.loading import load_hf
    from parity.subject.targets import DTYPES

    hf = load_hf(Path(checkpoint), DTYPES[dtype], "cpu")
    # Gradients are dropped as they are accumulated: the work is the same, the memory is the activations'.
    for p in hf.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    idx = token_batch("full_block", config_from_hf(hf.config.to_dict()))
    targets = targets_for(idx, hf.config.vocab_size)
    with torch.no_grad():
        hf_logits(hf, idx[:, :8])  # warm-up: page the weights in, as the suite's first check does
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss_of(hf_logits(hf, idx), targets).backward()
        times.append(time.perf_counter() - start)
    print(json.dumps({"model": model, "seconds": times[0], "all": times}))


def measure(
    model: str, cache: Path, workdir: Path, force: bool, yardstick_only: bool = False, repeats: int = 1
) -> Row:
    """All steps for one size."""
    os.environ["NANOGPT_PARITY_CACHE"] = str(cache)
    (t,) = resolve_targets(model, "synthetic", "cpu", None)
    row = Row(
        model,
        t.dtype_name,
        "shared" if t.memory.share_weights else "independent",
        t.memory.param_bytes,
        param_count(t.config) * 4,
        t.memory.estimated_peak_bytes,
    )
    py = sys.executable
    gen = run_child(
        [
            py,
            "-c",
            "import json, sys; from parity.subject.synthetic import ensure_synthetic_gpt2; "
            f"p, s = ensure_synthetic_gpt2({model!r}); print(json.dumps({{'path': str(p), 'seconds': s}}))",
        ],
        workdir / f"{model}-generate.log",
    )
    if gen.returncode != 0:
        row.outcome = f"checkpoint generation failed: {gen.tail}"
        return row
    info = json.loads(gen.tail)
    row.generation = "cached" if info["seconds"] is None else f"{info['seconds']:.1f}"
    if not yardstick_only and fits(t.memory.estimated_peak_bytes, force, "parity suite", row.notes):
        report = workdir / f"{model}-report.json"
        row.suite = run_child(
            [
                py,
                "-m",
                "pytest",
                "parity/",
                "--model",
                model,
                "--weights",
                "synthetic",
                "-q",
                "-p",
                "no:cacheprovider",
                "--parity-report",
                str(report),
            ],
            workdir / f"{model}-suite.log",
        )
        row.outcome = row.suite.tail
    if fits(yardstick_estimate(t), force, "HF forward + backward yardstick", row.notes):
        row.yardstick = run_child(
            [
                py,
                "-m",
                "benchmarks.parity_scaling",
                "--yardstick",
                model,
                info["path"],
                t.dtype_name,
                "--yardstick-repeats",
                str(repeats),
            ],
            workdir / f"{model}-yardstick.log",
        )
        if row.yardstick.returncode == 0:
            row.yardstick_seconds = json.loads(row.yardstick.tail)["seconds"]
        else:
            row.notes.append(f"yardstick failed: {row.yardstick.tail}")
    return row


def table(rows: list[Row]) -> str:
    """The markdown table of docs/measurements.md."""
    head = (
        "| model | dtype | weights | params | peak RSS | peak / param bytes | peak / fp32 param bytes "
        "| estimated peak | estimate / peak | wall | HF fwd+bwd (1 x 1024) | wall / fwd+bwd "
        "| checkpoint generation (s) | result |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    lines = [head]
    for r in rows:
        peak = r.suite.peak_rss if r.suite else None
        wall = r.suite.seconds if r.suite else None
        cells = [
            r.model,
            r.dtype,
            r.storage,
            format_bytes(r.param_bytes),
            format_bytes(peak) if peak else "-",
            f"{peak / r.param_bytes:.2f}" if peak else "-",
            f"{peak / r.param_bytes_fp32:.2f}" if peak else "-",
            format_bytes(r.estimated_peak),
            f"{r.estimated_peak / peak:.2f}" if peak else "-",
            f"{wall:.0f} s" if wall else "-",
            f"{r.yardstick_seconds:.0f} s" if r.yardstick_seconds else "-",
            f"{wall / r.yardstick_seconds:.2f}" if wall and r.yardstick_seconds else "-",
            r.generation or "-",
            r.outcome or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.model}: {n}" for r in rows for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    """Measure the given sizes and print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    parser.add_argument(
        "--cache", default=None, help="synthetic checkpoint cache (default: $NANOGPT_PARITY_CACHE)"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the raw numbers as JSON")
    parser.add_argument("--logs", default=None, metavar="DIR", help="keep the child processes' logs here")
    parser.add_argument("--force", action="store_true", help="run steps even when they may not fit in memory")
    parser.add_argument(
        "--yardstick-only", action="store_true", help="skip the suite, time only the yardstick"
    )
    parser.add_argument(
        "--yardstick-repeats",
        type=int,
        default=YARDSTICK_REPEATS,
        metavar="N",
        help="forward + backward passes of the yardstick; the first is reported, all are logged",
    )
    parser.add_argument(
        "--yardstick", nargs=3, metavar=("MODEL", "CHECKPOINT", "DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.yardstick:
        yardstick(*args.yardstick, repeats=args.yardstick_repeats)
        return 0
    from parity.subject.synthetic import cache_root

    cache = Path(args.cache) if args.cache else cache_root()
    workdir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="parity-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        print(f"measuring {model} ...", file=sys.stderr, flush=True)
        rows.append(measure(model, cache, workdir, args.force, args.yardstick_only, args.yardstick_repeats))
        print(table(rows[-1:]).splitlines()[2], file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\nlogs: {workdir}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
