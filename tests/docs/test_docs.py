"""The README is a front page; the docs link to files that exist; every alert rule has its
entry in the operator guide."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_README_LINES = 220
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    # The quick start stays true and prominent: the two commands on a fresh Debian 12.
    quick = text.split("## Quick start (Debian 12, as root)", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick and "make test" in quick
    assert text.index("## Quick start") < 40 * 80


def links(text: str) -> list[str]:
    """Every link target outside code fences and code spans."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence:
            out += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return out


def test_the_link_finder_sees_links() -> None:
    assert links("a [b](c.md) `[d](e.md)` ![f](g.png)\n```\n[h](i.md)\n```\n") == ["c.md",
                                                                                 "g.png"]


def test_every_relative_link_resolves() -> None:
    broken = []
    pages = [ROOT / "README.md", *DOCS]
    assert len(DOCS) >= 10
    for page in pages:
        for target in links(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_readme_links_every_docs_page() -> None:
    text = (ROOT / "README.md").read_text()
    for page in DOCS:
        assert f"(docs/{page.name})" in text, page.name


def test_every_alert_has_an_entry_in_the_operator_guide() -> None:
    rules = (ROOT / "contrib" / "prometheus" / "alerts.yml").read_text()
    names = re.findall(r"^\s*- alert: (\S+)\s*$", rules, re.MULTILINE)
    assert len(names) == rules.count("- alert:") >= 10
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    section = guide.split("## What each alert means and what to do about it", 1)[1]
    section = section.split("\n## ", 1)[0]
    for name in names:
        assert f"### {name}\n" in section, name
        entry = section.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert "**What to do:**" in entry, name
