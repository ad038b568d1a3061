"""Exit statuses shared by both front ends (`pytest parity/` and the bisect command).

They follow `git bisect run`'s protocol, so a CI job and a bisection read a run the same way.
"""

from __future__ import annotations

EXIT_GOOD = 0
EXIT_BAD = 1
EXIT_SKIP = 125  # git bisect run: this commit cannot be tested; pytest parity/ when no check could be judged
EXIT_ABORT = 129  # git bisect run: anything above 127 stops the bisection
