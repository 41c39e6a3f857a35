"""The paper-audit pages (docs/papers/*.md) stay current: every file, function, class and test they name exists.

A page cites `path` or `path::name` (``name`` may be ``Class.method``); `::name` continues the last path of the
same table cell. Paths are those under the repository's code, test, config and benchmark folders; globs
(`configs/speeddiff/bad_model_*.yaml`) must match at least one file.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = sorted((ROOT / "docs" / "papers").glob("*.md"))
ROOTS = ("lightning_modules/", "tests/", "configs/", "benchmarks/", "callbacks/", "datamodules/")
TOKEN = re.compile(r"`([^`]+)`")


def references(page: Path) -> Iterator[tuple[str, str | None]]:
    """(path, name or None) for every backticked reference of the page, in order."""
    for line in page.read_text(encoding="utf-8").splitlines():
        for cell in re.split(r"(?<!\\)\|", line):  # table cells; an escaped \| stays inside its cell
            last: str | None = None
            for token in TOKEN.findall(cell):
                if token.startswith("::"):
                    assert last is not None, f"{page.name}: `{token}` has no path before it in its cell: {cell!r}"
                    yield last, token[2:]
                    continue
                path, _, name = token.partition("::")
                if path.startswith(ROOTS) and not any(c in path for c in " =()"):
                    last = path
                    yield path, name or None


def defines(text: str, name: str) -> bool:
    """``def name`` / ``class name`` (each part of ``Class.method``) or a module-level ``NAME =`` in ``text``."""
    return all(re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(part)}\b|^{re.escape(part)}\s*[:=]",
                         text, re.MULTILINE) for part in name.split("."))


def test_there_are_audit_pages_for_the_papers_without_official_code():
    assert {p.stem for p in PAGES} >= {"sid2", "speeddiff"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_file_function_and_test_exists(page: Path):
    refs = list(references(page))
    assert len(refs) > 20, "a paper audit cites the code and tests of each row"
    missing = []
    for path, name in refs:
        files = sorted(ROOT.glob(path)) if "*" in path else [ROOT / path]
        if not files or not all(f.exists() for f in files):
            missing.append(path)
        elif name is not None and not defines(files[0].read_text(encoding="utf-8"), name):
            missing.append(f"{path}::{name}")
    assert not missing, f"{page.name} cites what does not exist: {missing}"
