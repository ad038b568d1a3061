"""One registry, every front end: `pytest parity/` and the bisect command list exactly the registry's checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from nanogpt.model import GPT2_SIZES
from parity.bisect import build_parser, parse_checks
from parity.registry import CHECK_NAMES, CHECKS

ROOT = Path(__file__).resolve().parent.parent


def test_every_check_is_defined_once_with_its_meaning_and_needs() -> None:
    assert len(CHECK_NAMES) == len(set(CHECK_NAMES))
    for name, check in CHECKS.items():
        assert check.name == name and re.fullmatch(r"[a-z]+(-[a-z]+)*", name), name
        assert check.meaning and check.needs and callable(check.run), name
    required = {"logits", "loss", "grads", "tied-gradient", "tied-storage", "param-count", "own-count",
                "optimizer-once", "checkpoint-once", "decay-groups", "train-steps", "init", "init-scheme",
                "inference", "dropout-sites"}  # fmt: skip
    assert required <= set(CHECK_NAMES), sorted(required - set(CHECK_NAMES))


def test_bisect_help_lists_exactly_the_registry() -> None:
    parser = build_parser()
    checks = next(a for a in parser._actions if "--checks" in a.option_strings)
    listed = re.findall(r"(?:^|\. |; )([a-z]+(?:-[a-z]+)*): ", checks.help)
    assert listed == list(CHECK_NAMES), listed
    assert parse_checks(",".join(CHECK_NAMES)) == list(CHECK_NAMES)
    assert parse_checks("all") == list(CHECK_NAMES)


def test_parity_collects_one_test_per_check_and_model() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "parity/", "--co", "-q", "-p", "no:cacheprovider", "--model", "all",
         "--weights", "synthetic"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ids = set(re.findall(r"test_check\[([^\]]+)\]", out.stdout))
    assert ids == {f"{size}-{check}" for size in GPT2_SIZES for check in CHECK_NAMES}, sorted(ids)[:10]
