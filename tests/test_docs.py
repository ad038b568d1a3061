"""The documentation stays true to the code: generated pages are fresh, and every relative link resolves.

docs/checks.md (and every other page in `parity.frontends.docs_pages.PAGES`) is rendered from the code and
committed; a change to a check's meaning without regenerating the page fails here, with the command that
regenerates it. Every `[text](path)` link of the README and docs/ must name a file of the repository and,
where it points into a Markdown page, one of that page's headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from parity.checks.registry import CHECKS
from parity.frontends.docs_pages import (
    PAGES,
    PLANNED_PAGES,
    REGENERATE,
    render_checks_page,
    stale_pages,
    write_pages,
)

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_MAX_LINES = 170


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a Markdown page's headings (lower case, punctuation dropped, spaces to -)."""
    anchors = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def planned(path: Path) -> bool:
    """True for a generated page whose renderer is still to come (a link to it may dangle until then)."""
    return path.is_relative_to(ROOT) and path.relative_to(ROOT).as_posix() in PLANNED_PAGES


def broken_links(page: Path) -> list[str]:
    """The relative links of page whose file (or heading anchor) does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: and the like
        path_text, _, anchor = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        if not path.exists():
            if not planned(path):
                broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {path.name}")
    return broken


@pytest.mark.parametrize("relative", [relative for relative, _ in PAGES])
def test_generated_page_is_fresh(relative: str) -> None:
    assert relative not in stale_pages(ROOT), f"{relative} is stale: regenerate it with `{REGENERATE}`"


def test_stale_page_is_detected_and_rewritten(tmp_path: Path) -> None:
    relative = PAGES[0][0]
    assert stale_pages(tmp_path) == [relative for relative, _ in PAGES]  # missing counts as stale
    assert write_pages(tmp_path) == [relative for relative, _ in PAGES]
    assert stale_pages(tmp_path) == []
    page = tmp_path / relative
    page.write_text(page.read_text(encoding="utf-8").replace("PASS when", "passes when"), encoding="utf-8")
    assert stale_pages(tmp_path) == [relative]
    assert write_pages(tmp_path) == [relative]
    assert write_pages(tmp_path) == []


def test_checks_page_lists_every_check_with_its_meaning() -> None:
    page = render_checks_page()
    for check in CHECKS.values():
        row = next((line for line in page.splitlines() if line.startswith(f"| `{check.name}` |")), None)
        assert row is not None, f"{check.name} has no row in docs/checks.md"
        assert " ".join(check.meaning.split())[:40] in row


@pytest.mark.parametrize("page", MARKDOWN, ids=[p.relative_to(ROOT).as_posix() for p in MARKDOWN])
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section) [web](https://example.org/x) [gone](missing.md) [bad](other.md#nowhere)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with the anchor #nowhere in other.md",
    ]


def test_planned_pages_are_not_generated_yet() -> None:
    generated = {relative for relative, _ in PAGES}
    both = generated & set(PLANNED_PAGES)
    assert not both, f"{sorted(both)} now generated (in PAGES): drop them from PLANNED_PAGES"


def test_readme_is_read_in_minutes() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/"
