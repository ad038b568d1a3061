"""The harness's exceptions: why a check cannot judge, why an implementation cannot run, a bad option.

Plain types at the bottom of the harness (they import nothing of it), so that every room can raise them and
every front end can tell them apart.
"""

from __future__ import annotations

from pathlib import Path


class CannotTest(Exception):
    """The check cannot run on this implementation (something it needs is absent); the message says why."""


class NotApplicable(CannotTest):
    """The implementation has no such part (no get_num_params, no dropout, no configure_optimizers).

    Still CANNOT-TEST in every report, but unlike code that could not be run, an absent part is a design
    choice of a correct model: the bisect command does not skip a commit for it unless the check was named.
    """


class ImplementationError(Exception):
    """The implementation cannot be imported, built or loaded (the commit cannot be tested); says why."""


class UsageError(ValueError):
    """A bad command-line choice; the message names the valid choices."""


# The harness's own source trees: an exception of the kinds above counts as the harness's only when its
# innermost frame is in one of them. The tested code may raise them too (it can import parity), and then
# they are the implementation's errors: a crash, never "not applicable" or "the checkpoint is bad".
HARNESS_DIRS = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "nanogpt")


def raised_by_harness(error: BaseException) -> bool:
    """True when error was raised by the harness's own code (parity/ or nanogpt/), not by the tested code."""
    tb = error.__traceback__
    if tb is None:
        return True  # never raised, only built: the harness's own object
    while tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(raised_in.is_relative_to(d) for d in HARNESS_DIRS)
