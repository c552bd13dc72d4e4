"""The built documentation site navigates when opened from disk: every internal link (href and
src of every page) resolves to a file of the site, and its #anchor to an id on that page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[test]' brings it)")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.links.append(value)
            elif name in ("id", "name"):
                self.ids.add(value)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_every_internal_link_of_the_built_site_resolves_to_a_file(site: Path) -> None:
    # 404.html is the error page of a web server (its links are absolute, from the server's root)
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) > 15
    parsed = {page: _parse(page) for page in pages}
    broken: list[str] = []
    for page, found in parsed.items():
        for link in found.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue  # external
            target = page if not parts.path else (page.parent / urllib.parse.unquote(parts.path)).resolve()
            if target.is_dir():
                broken.append(f"{page.relative_to(site)}: {link} is a folder (a directory listing from disk)")
            elif not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link} -> no such file")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} -> no #{parts.fragment} there")
    assert not broken, "\n".join(broken[:50])


def test_no_page_mentions_an_issue_number() -> None:
    pattern = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)
    found = [
        f"{page.relative_to(REPO)}: {match.group(0)}"
        for page in sorted((REPO / "docs").rglob("*.md"))
        for match in pattern.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not found, found
