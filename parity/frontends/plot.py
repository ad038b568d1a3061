"""Draw where two implementations part: the per-module relative-difference profiles of a parity report.

`python -m parity.frontends.plot report.json -o profile.png` reads the `"profiles"` of a `--parity-report`
file (one per logits comparison that ran with diagnosis) and draws one line per comparison: the modules in
forward order on x, the relative difference of their outputs on a log y axis, with the dtype's noise
level and the tolerance drawn in. A run that passes stays flat near the noise; a bug shows as a step at
the module that introduces it, which is marked. matplotlib is an optional extra
(`pip install 'nanogpt-parity[plot]'`); a missing matplotlib, a malformed report, or an output that is
not a regular file or is the report itself (nanogpt/paths.py) is one error line and exit status 2, checked
before anything is drawn.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogpt.atomic import atomic_file
from nanogpt.json_files import JsonFileError, read_json_object
from nanogpt.paths import OutputPathError, refuse_inputs, resolve_output_file

USAGE_ERROR = 2
# Exact agreement (a relative difference of 0) has no logarithm: it is drawn a decade below the smallest
# non-zero value, or here when there is none.
ZERO_FLOOR = 1e-18
MAX_TICK_LABELS = 28
MAX_REPORT_BYTES = 1 << 28  # reports hold per-module numbers, not tensors: far below this


class ReportError(ValueError):
    """A report that cannot be plotted; the message names what is wrong."""


@dataclass(frozen=True)
class Profile:
    """One comparison's per-module relative differences, in forward order."""

    model: str
    comparison: str
    dtype: str
    modules: list[str]
    relative_difference: list[float | None]
    noise: float
    rtol: float
    atol: float
    passed: bool

    @property
    def label(self) -> str:
        """The legend entry: model, comparison, dtype and verdict."""
        return f"{self.model} {self.comparison} ({self.dtype}): {'pass' if self.passed else 'FAIL'}"

    def first_divergence(self) -> int | None:
        """Index of the first module whose relative difference exceeds the noise level, or None."""
        return next(
            (i for i, r in enumerate(self.relative_difference) if r is not None and r > self.noise), None
        )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _profile(raw: Any, i: int) -> Profile:
    where = f"profiles[{i}]"
    if not isinstance(raw, dict):
        raise ReportError(f"{where} must be an object, got {type(raw).__name__}")
    need = ("model", "comparison", "dtype", "modules", "relative_difference", "noise", "tolerance", "passed")
    missing = [k for k in need if k not in raw]
    if missing:
        raise ReportError(f"{where} lacks {', '.join(missing)}")
    modules, rel = raw["modules"], raw["relative_difference"]
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise ReportError(f"{where}.modules must be a non-empty list of module names")
    if not isinstance(rel, list) or len(rel) != len(modules):
        raise ReportError(
            f"{where}.relative_difference must be a list as long as modules ({len(modules)} entries)"
        )
    values = [
        None if r is None else _number(r, f"{where}.relative_difference[{j}]") for j, r in enumerate(rel)
    ]
    if any(v is not None and v < 0 for v in values):
        raise ReportError(f"{where}.relative_difference has a negative entry; relative differences are >= 0")
    tol = raw["tolerance"]
    if not isinstance(tol, dict) or "rtol" not in tol or "atol" not in tol:
        raise ReportError(f"{where}.tolerance must be an object with rtol and atol")
    if not isinstance(raw["passed"], bool):
        raise ReportError(f"{where}.passed must be true or false")
    return Profile(
        model=str(raw["model"]),
        comparison=str(raw["comparison"]),
        dtype=str(raw["dtype"]),
        modules=modules,
        relative_difference=values,
        noise=_number(raw["noise"], f"{where}.noise"),
        rtol=_number(tol["rtol"], f"{where}.tolerance.rtol"),
        atol=_number(tol["atol"], f"{where}.tolerance.atol"),
        passed=raw["passed"],
    )


def read_profiles(path: Path) -> list[Profile]:
    """The profiles of a parity report file, validated; ReportError names the first problem."""
    try:
        report = read_json_object(path, "a parity report", MAX_REPORT_BYTES)
    except JsonFileError as e:
        raise ReportError(f"{e}; pass the JSON file written by --parity-report") from None
    if "profiles" not in report:
        raise ReportError(
            f'{path}: no "profiles" in the report; it comes from a run whose logits comparisons ran '
            "with diagnosis (pytest parity/ --parity-report PATH)"
        )
    raw = report["profiles"]
    if not isinstance(raw, list) or not raw:
        raise ReportError(f'{path}: "profiles" must be a non-empty list')
    try:
        return [_profile(p, i) for i, p in enumerate(raw)]
    except ReportError as e:
        raise ReportError(f"{path}: {e}") from None


def zero_floor(profiles: list[Profile]) -> float:
    """Where exact agreement is drawn: a decade below the smallest non-zero difference or line."""
    values = [r for p in profiles for r in p.relative_difference if r] + [
        p.noise for p in profiles if p.noise
    ]
    return min(values) / 10 if values else ZERO_FLOOR


def _short(module: str) -> str:
    return module.removeprefix("transformer.")


def draw(profiles: list[Profile]) -> Any:
    """A matplotlib Figure of the profiles (matplotlib imported here: it is an optional extra)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    longest = max(profiles, key=lambda p: len(p.modules))
    floor = zero_floor(profiles)
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, 0.12 * len(longest.modules) + 6)), 5.5), dpi=100)
    for k, p in enumerate(profiles):
        color = f"C{k % 10}"
        xs = [i for i, r in enumerate(p.relative_difference) if r is not None]
        ys = [max(p.relative_difference[i] or 0.0, floor) for i in xs]
        ax.plot(
            xs,
            ys,
            color=color,
            marker="o" if p.passed else "x",
            markersize=3,
            linewidth=1.2 if p.passed else 2.0,
            label=p.label,
        )
        zeros = [i for i in xs if p.relative_difference[i] == 0.0]
        if zeros:
            ax.scatter(
                zeros,
                [floor] * len(zeros),
                marker="v",
                s=36,
                facecolors="none",
                edgecolors=color,
                zorder=3,
                label=f"{p.model}: exact zero (drawn at {floor:.0e})",
            )
        first = None if p.passed else p.first_divergence()
        if first is not None:
            y = max(p.relative_difference[first] or 0.0, floor)
            ax.annotate(
                f"first divergence: {_short(p.modules[first])}",
                xy=(first, y),
                xytext=(-12, -22),  # below the step: never up in the title
                textcoords="offset points",
                ha="right",
                va="top",
                color=color,
                fontsize=8,
                arrowprops={"arrowstyle": "->", "color": color},
            )
    # One noise line and one tolerance line per distinct value (several profiles usually share them).
    for value, style, what in sorted(
        {(p.noise, "--", f"{p.dtype} noise") for p in profiles}
        | {(p.rtol, ":", f"tolerance rtol ({p.dtype})") for p in profiles}
    ):
        ax.axhline(max(value, floor), color="0.35", linestyle=style, linewidth=1.0)
        ax.annotate(
            f"{what} {value:.0e}",
            xy=(0, max(value, floor)),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=7,
            color="0.3",
        )
    step = max(1, math.ceil(len(longest.modules) / MAX_TICK_LABELS))
    ticks = list(range(0, len(longest.modules), step))
    ax.set_xticks(ticks, [_short(longest.modules[i]) for i in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("module, in forward order")
    ax.set_ylabel("relative difference of the module's output")
    ax.set_title("Where the implementations part: per-module relative difference")
    ax.grid(True, which="major", alpha=0.3)
    # Outside the axes, to their right: never over the curves, the annotations or the title.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def save_png(fig: Any, out: Path) -> None:
    """Write the figure as PNG atomically, with the permissions of any file the user writes."""
    with atomic_file(out, "wb") as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")


def output_path(value: str, report: Path) -> Path:
    """The validated PNG path of -o: a regular file or a new one in an existing directory, never the report.

    Devices, FIFOs, directories and an empty value are refused (nanogpt/paths.py), a symlink is written
    through; ReportError says why.
    """
    try:
        out = resolve_output_file(value, "-o")
        refuse_inputs(out, [("the report", report)], "-o")
    except OutputPathError as e:
        raise ReportError(str(e)) from None
    if not out.parent.is_dir():
        raise ReportError(f"-o {value}: {out.parent} is not a directory; create it or choose another")
    return out


def main(argv: list[str] | None = None) -> int:
    """Plot a report's profiles into a PNG; 0 on success, 2 on a usage error (one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m parity.frontends.plot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("report", type=Path, help="JSON file written by pytest parity/ --parity-report")
    parser.add_argument("-o", "--output", default="profile.png", help="PNG to write (a regular file)")
    args = parser.parse_args(argv)
    try:
        profiles = read_profiles(args.report)
        out = output_path(args.output, args.report)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError(
                "python -m parity.frontends.plot needs matplotlib: "
                "pip install 'nanogpt-parity[plot]' (or matplotlib)"
            ) from None
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    fig = draw(profiles)
    save_png(fig, out)
    print(f"wrote {out} ({len(profiles)} profile{'s' if len(profiles) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
