"""Errors of the reference package that several modules raise, in a module of their own (no import cycles)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as GPT-2; the message names the problem and the fix."""
