"""Data-parallel training on CPU with gloo: 2 processes equal 1 process with the same global batch.

Two end-to-end runs go through the real launcher (`torchrun --standalone --nproc_per_node=2 -m
nanogpt.train`), once with DDP and once with FSDP2, and their checkpoints are compared with an
in-process single-process run whose batch is twice as large. A spawned pair of workers checks the tie
itself: DDP all-reduces the tied matrix once per step (and not on accumulation micro-steps), FSDP2 keeps
lm_head and wte one Parameter through the steps, and sharding them into different groups is refused.
Everything runs in float64 so that the only differences are summation order (~1e-16 relative); every
process run is bounded by a timeout.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanogpt.checkpoint import build_model, load_checkpoint
from nanogpt.distributed import free_port, shard_fsdp, wrap_ddp
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import StepConfig, train, train_step
from nanogpt.train_config import TrainConfig
from parity.core.tolerances import TRAIN_STEPS_F64

TORCH_VERSION = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
TIMEOUT_S = 180  # a 2-process run takes ~10 s; the bound only stops a hung collective from hanging CI
WORDS = "every rank sees its own half of the batch and the gradients are averaged across ranks".split()
# float64 AdamW noise vs a wrong reduction: TRAIN_STEPS_F64 in parity/core/tolerances.py.
ATOL = TRAIN_STEPS_F64.atol
# On top of tests/conftest.py's tiny run: float64, 3 steps of 2 accumulated micro-batches, clipped.
RUN = dict(
    eval_iters=2,
    eval_interval=3,
    max_iters=3,
    learning_rate=1e-3,
    gradient_accumulation_steps=2,
    grad_clip=1.0,
    dtype="float64",
    seed=11,
    always_save_checkpoint=True,
)


# Tiny models gain nothing from a second thread: tests/conftest.py one_thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def single_process(
    tmp_path_factory: pytest.TempPathFactory,
    make_token_dataset: Callable[..., Path],
    tiny_train_config: Callable[..., TrainConfig],
) -> tuple[Path, GPT, dict]:
    """The dataset, and the model and evaluations of the 1-process run with batch 4 (= 2 ranks x 2)."""
    root = tmp_path_factory.mktemp("dist")
    data_dir = make_token_dataset(root, 1500, WORDS, seed=2)
    cfg = tiny_train_config(**RUN, batch_size=4, data_dir=data_dir, out_dir=root / "single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one_thread fixture
    try:
        result = train(cfg, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return data_dir, result.model, result.evals


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `torchrun --standalone --nproc_per_node=2 -m nanogpt.train args` with a timeout."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nanogpt.train",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=cwd)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one(
    single_process: tuple[Path, GPT, dict],
    tiny_train_args: Callable[..., list[str]],
    tmp_path: Path,
    parallel: str,
) -> None:
    data_dir, reference, reference_evals = single_process
    args = tiny_train_args(**RUN, batch_size=2, parallel=parallel, data_dir=data_dir, out_dir=tmp_path)
    proc = torchrun(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{parallel} x2" in proc.stdout
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] == 3 and len(ckpt["rng"]) == 2  # one RNG state per rank
    # evaluation averages the ranks' halves: the same loss as one process on the whole batch
    assert ckpt["best_val_loss"] == pytest.approx(reference_evals[3]["val"], abs=ATOL)
    model = build_model(ckpt)
    for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(
            q, p, rtol=0, atol=ATOL, msg=lambda m, name=name: f"{parallel} {name}: {m}"
        )


# ----------------------------------------------------------------------------------------------------------
# the tie under DDP and FSDP2, inside the workers

TINY = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def global_batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """steps global batches of 4 sequences."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        seq = torch.randint(0, TINY.vocab_size, (4, TINY.block_size + 1), generator=g)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def tie_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: DDP bucket accounting, then FSDP2 steps; rank 0 also runs the 1-process reference."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cpu = torch.device("cpu")
    report: dict[str, object] = {}
    try:
        mine = [(x[rank * 2 : rank * 2 + 2], y[rank * 2 : rank * 2 + 2]) for x, y in global_batches(3)]

        # DDP: which parameters each all-reduce carries, over one step of 2 micro-batches
        torch.manual_seed(0)
        model = GPT(TINY).double()
        ddp = wrap_ddp(model, cpu)
        reduced: list[torch.Tensor] = []

        def record(state, bucket):  # unannotated: DDP checks annotations, and ours would be strings
            """Note the bucket's parameters, then all-reduce as DDP does by default."""
            reduced.extend(bucket.parameters())
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(dist.group.WORLD, record)
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
        x, y = mine[0]
        train_step(ddp, opt, [(x[:1], y[:1]), (x[1:], y[1:])], StepConfig(grad_clip=1.0))
        report["ddp_tied_reductions"] = sum(p is model.lm_head.weight for p in reduced)
        report["ddp_reduced_numel"] = sum(p.numel() for p in reduced)
        report["unique_numel"] = sum(p.numel() for p in model.parameters())

        # FSDP2: 3 steps on this rank's half of each global batch
        torch.manual_seed(0)
        model = GPT(TINY).double()
        reference = copy.deepcopy(model)  # deepcopy keeps the tie
        shard_fsdp(model, cpu, world)
        report["fsdp_tied_before"] = model.lm_head.weight is model.transformer.wte.weight
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
        for batch in mine:
            train_step(model, opt, [batch], StepConfig(grad_clip=1.0))
        report["fsdp_tied_after"] = model.lm_head.weight is model.transformer.wte.weight
        full = {name: p.full_tensor() for name, p in model.named_parameters()}  # collective

        # the split the design avoids: head and embedding in different FSDP groups
        torch.manual_seed(0)
        split = GPT(TINY).double()
        mesh = init_device_mesh("cpu", (world,))
        try:
            fully_shard(split.lm_head, mesh=mesh)
            fully_shard(split, mesh=mesh)
            split(*mine[0])[1].backward()  # FSDP2 checks the groups at its lazy init, on the first forward
            report["split_groups_error"] = None
        except ValueError as e:
            report["split_groups_error"] = str(e)

        if rank == 0:
            ref_opt = reference.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
            for batch in global_batches(3):
                train_step(reference, ref_opt, [batch], StepConfig(grad_clip=1.0))
            torch.save(
                {"fsdp": full, "reference": dict(reference.named_parameters())}, Path(out_dir) / "params.pt"
            )
    finally:
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


def spawn_bounded(fn: object, world: int, args: tuple, timeout: float) -> None:
    """mp.spawn with a deadline: kill the workers and fail if they do not finish in time."""
    context = mp.start_processes(fn, args=(world, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout:.0f} s")


def test_tie_is_reduced_once_and_kept_under_fsdp(tmp_path: Path) -> None:
    spawn_bounded(tie_worker, 2, (free_port(), str(tmp_path)), TIMEOUT_S)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # DDP: one all-reduce per step (none on the first micro-batch), carrying the tied matrix once
        assert report["ddp_tied_reductions"] == 1, report
        assert report["ddp_reduced_numel"] == report["unique_numel"], report
        assert report["fsdp_tied_before"] and report["fsdp_tied_after"], report
        if TORCH_VERSION >= (2, 13):  # older FSDP2 accepted the split and gathered/reduced the matrix twice
            assert "already managed by another FSDP group" in (report["split_groups_error"] or ""), report
    params = torch.load(tmp_path / "params.pt", weights_only=True)
    for name, p in params["reference"].items():
        torch.testing.assert_close(
            params["fsdp"][name], p, rtol=0, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}"
        )
