"""The docs point at things that exist: every relative link and image in README.md and docs/**/*.md resolves to a
file or folder, and every repository path the README quotes in backticks exists (docs/testing.md)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)  # fenced code blocks are not Markdown
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](path), ![alt](path "title")
REPO_PATH = re.compile(r"`((?:configs|lightning_modules|callbacks|datamodules|benchmarks|tests|docs)/[\w./-]*)(?:::[\w.]+)?`")


def prose(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def broken_links(page: Path) -> list[str]:
    """Relative link targets of ``page`` (anchors stripped; web and mail links skipped) that do not exist."""
    targets = (t.split("#")[0] for t in LINK.findall(prose(page)))
    return [t for t in targets if t and not re.match(r"[a-z]+:", t) and not (page.parent / t).exists()]


def missing_repo_paths(page: Path) -> list[str]:
    """Backticked repository paths of ``page`` (a ``::name`` suffix stripped) that do not exist."""
    return [p for p in REPO_PATH.findall(prose(page)) if not (ROOT / p).exists()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page: Path):
    assert not broken_links(page), f"{page.relative_to(ROOT)} links to what does not exist: {broken_links(page)}"


def test_every_repository_path_in_the_readme_exists():
    missing = missing_repo_paths(ROOT / "README.md")
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_the_checks_catch_a_broken_link_and_a_missing_path(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md#top) [web](https://example.org) ![gone](images/gone.png) [gone](nope.md#x)\n"
                    "`configs/sit/tiny_cpu.yaml` `tests/unit/nope.py::test_x` `runs/x.ckpt`\n"
                    "```\n[in code](not_a_link.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["images/gone.png", "nope.md"]
    assert missing_repo_paths(page) == ["tests/unit/nope.py"]
