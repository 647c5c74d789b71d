"""Every relative link in the README and docs/ names a file that exists and, where it names a
section (``#anchor``), a heading of that file, by GitHub's anchor rules."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: ``[text](target)``, not images' sources or URLs with a scheme
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives ``page``'s headings: lower case, punctuation other than
    hyphens and underscores dropped, spaces to hyphens, ``-1``, ``-2``... on repeats."""
    seen: Counter[str] = Counter()
    found = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def test_anchor_rules_match_githubs() -> None:
    page = ROOT / "docs" / "privacy.md"
    assert "distributed-dp-one-step-of-the-federation-per-round---distributed-dp" in anchors(page)
    assert "one-noise-for-everyone-fedrec-pooled" in anchors(page)


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that name no file, or no heading of the file."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading: `code` (too)\n\n## A heading: `code` (too)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n[ok](other.md#a-heading-code-too) [ok](other.md#a-heading-code-too-1) "
        "[ok](#here) [url](https://example.org/x.md#nothing)\n"
        "[no file](missing.md) [no heading](other.md#elsewhere) [no heading here](#there)\n"
        "```\n[in code](missing-too.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no file missing.md",
        "other.md#elsewhere: no heading with anchor #elsewhere",
        "#there: no heading with anchor #there",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    assert not broken_links(page), f"{page.name}: " + "; ".join(broken_links(page))
