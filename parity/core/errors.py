"""The harness's exceptions: why a check cannot judge, why an implementation cannot run, a bad option.

Plain types at the bottom of the harness (they import nothing of it), so that every room can raise them and
every front end can tell them apart.
"""

from __future__ import annotations


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
