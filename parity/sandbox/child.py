"""Child process of parity/sandbox/parent.py: import the tested code, run the checks, report through the pipe.

`python -m parity.sandbox.child FD` reads its request (with a nonce) from stdin, then writes
newline-delimited JSON messages to the pipe FD: each phase before it starts, every progress line (each
phase's start and end, the subject's loading and forward + backward, which the parent shows as they
arrive: parity/sandbox/relay.py), and the result at the end (every verdict as `Verdict.to_json` writes
it, comparison records and profiles included), each carrying the nonce. It exits with os._exit right
after the result, so nothing the tested code registered (atexit handlers, threads) can delay or change
it. The parent trusts nothing else it does. The tested code's `tiktoken.get_encoding("gpt2")` is served
offline, from the BPE files the project ships.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before anything imports the tested code: importing it must not write __pycache__ into its repository.
sys.dont_write_bytecode = True

# Where tiktoken's gpt2 encoding downloads its files from (tiktoken_ext/openai_public.py); tiktoken caches
# each under the sha1 of this address in TIKTOKEN_CACHE_DIR, and checks its sha256 when reading it.
TIKTOKEN_GPT2_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}


def serve_tiktoken_offline() -> Path | None:
    """A tiktoken cache holding the GPT-2 BPE files the project ships, set as TIKTOKEN_CACHE_DIR; None
    when they are missing or fail their sha256 check (then tiktoken behaves as it always does)."""
    from nanogpt.tokenizer import TokenizerFileError, bpe_files

    try:
        files = dict(zip(("encoder.json", "vocab.bpe"), bpe_files(), strict=True))
    except TokenizerFileError:
        return None
    cache = Path(tempfile.mkdtemp(prefix="nanogpt-parity-tiktoken-"))
    for role, url in TIKTOKEN_GPT2_URLS.items():
        (cache / hashlib.sha1(url.encode()).hexdigest()).symlink_to(files[role])
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def _sender(fd: int, nonce: str) -> Callable[..., None]:
    """A function writing one message (with the nonce) per call to the pipe."""
    channel = os.fdopen(fd, "w", encoding="utf-8")

    def send(**message: Any) -> None:
        channel.write(json.dumps({**message, "nonce": nonce}) + "\n")
        channel.flush()

    return send


def _target(message: dict[str, Any]) -> Any:
    import torch

    from nanogpt.model import GPTConfig
    from parity.subject.targets import ParityTarget

    return ParityTarget(
        message["name"],
        GPTConfig(**message["config"]),
        message["weights"],
        message["reason"],
        message["device"],
        getattr(torch, message["dtype"]),
        checkpoint=Path(message["checkpoint"]),
        seed=message["seed"],
        dtype_reason=message["dtype_reason"],
        hf_activation=message["hf_activation"],
        twin_checkpoint=Path(message["twin_checkpoint"]),
    )


def _load_notes(subject: Any) -> list[str]:
    """How the model was loaded: the implementation's notes, the buffers kept, how full logits are read."""
    notes = list(subject.impl.notes)
    report = subject.report
    if report is not None:
        buffers = ", ".join(report.kept_buffers[:4]) + (" ..." if len(report.kept_buffers) > 4 else "")
        mode = subject.logits_mode
        notes.append(
            f"loaded {report.checkpoint} with the nanoGPT converter; buffers left as built: "
            f"{buffers or 'none'}" + (f"; every position's logits by: {mode}" if mode else "")
        )
    if subject.load_error is not None:
        notes.append(f"failed: {subject.load_error}")
    return notes


def main() -> None:
    """Run the request on stdin; see the module docstring."""
    request = json.loads(sys.stdin.readline())
    send = _sender(int(sys.argv[1]), request.pop("nonce"))  # the nonce lives on only in send's closure
    sys.stdin.close()
    import torch

    from nanogpt.hf import CheckpointError
    from parity.checks.registry import run_checks
    from parity.core.errors import ImplementationError
    from parity.core.verdicts import Status, Verdict
    from parity.foreign.impl import import_implementation, reference_implementation
    from parity.sandbox import integrity
    from parity.sandbox.fingerprint import hf_fingerprint
    from parity.sandbox.witness import witness
    from parity.subject.loading import silence_progress_bars
    from parity.subject.memory import fixed_mmap_threshold
    from parity.subject.progress import phase, send_lines_to
    from parity.subject.subject import Subject

    silence_progress_bars()
    fixed_mmap_threshold()
    send_lines_to(lambda text: send(progress=text))

    def stage(name: str, label: str) -> contextlib.AbstractContextManager[Any]:
        """Phase name begins (what the parent says of a child that ends in it), with its progress lines."""
        send(phase=name)
        return phase(label)

    tiktoken_cache = serve_tiktoken_offline()  # `tiktoken.get_encoding("gpt2")` at import, offline

    def exit_now() -> None:
        """os._exit(0), the offline tiktoken cache removed first."""
        if tiktoken_cache is not None:
            shutil.rmtree(tiktoken_cache, ignore_errors=True)
        os._exit(0)

    torch.set_num_threads(request["num_threads"])  # the same rounding as the caller's process
    names: list[str] = request["checks"]
    hf_fingerprint()  # transformers' first model rebinds a few torch names: before the snapshot, not after
    untouched = integrity.snapshot()  # the harness and torch before the tested code is imported
    try:
        with stage("import", f"importing {request['label'] or 'the reference'}"):
            if request["impl"] is None:
                impl = reference_implementation()
            else:
                impl = import_implementation(
                    request["impl"], run_module=request["run_module"], mapping=request["mapping"]
                )
                impl.label = request["label"]
    except ImplementationError as e:
        verdicts = [Verdict(c, Status.CANNOT_TEST, str(e)) for c in names]
        send(
            kind="result",
            verdicts=[v.to_json() for v in verdicts],
            fingerprints=[hf_fingerprint()],
            notes=[f"import failed: {e}"],
        )
        exit_now()
    subject = Subject(
        impl,
        _target(request["target"]),
        tied_decay=request["tied_decay"],
        loader=request["loader"],
        profiles=request["profiles"],
    )
    checkpoint_error = ""
    try:
        with stage("build", "building the model and loading its weights"):
            subject.model()
    except ImplementationError:
        pass  # remembered by the subject: every check that needs the model says CANNOT-TEST with it
    except CheckpointError as e:  # the checkpoint, not the code: the caller stops with it
        checkpoint_error = str(e)
    if subject.report is not None and subject.report.output:
        sys.stdout.write(subject.report.output)  # what __init__ printed joins the captured output
        sys.stdout.flush()
    fingerprints = [hf_fingerprint()]

    def hf_witness() -> list[float] | None:
        """The witness of the Hugging Face model the checks compare with (None: it cannot even run)."""
        try:
            return witness(subject.hf(), subject.target)
        except CheckpointError:
            raise
        except Exception:  # noqa: BLE001 - transformers broken in this process: the parent reads a mismatch
            return None

    witnesses = []
    verdicts = []
    try:
        if not checkpoint_error:
            with stage("Hugging Face's model", "loading Hugging Face's model"):
                witnesses.append(hf_witness())
    except CheckpointError as e:
        checkpoint_error = str(e)
    for name in [] if checkpoint_error else names:
        try:
            with stage(f"check {name}", f"check {name}"):
                verdicts += run_checks([name], subject)
        except CheckpointError as e:
            checkpoint_error = str(e)
            break
    send(phase="the final transformers fingerprint")
    fingerprints.append(hf_fingerprint())
    if not checkpoint_error:
        witnesses.append(hf_witness())
    send(
        kind="result",
        verdicts=[v.to_json() for v in verdicts],
        fingerprints=fingerprints,
        witnesses=witnesses,
        harness_changes=integrity.changes(untouched),
        notes=_load_notes(subject),
        checkpoint_error=checkpoint_error,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    exit_now()


if __name__ == "__main__":
    main()
