"""The documents a user reads: every relative link resolves, every #anchor names a heading, and no
document points at a path outside the repository (a clone has only the repository)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").glob("**/*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_links_resolve_and_nothing_points_outside_the_repository(document):
    text = document.read_text(encoding="utf-8")
    own = anchors(text)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in own, f"{document.name}: no heading for #{anchor}"
            continue
        resolved = (document.parent / path).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{document.name}: {target} does not resolve"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text(encoding="utf-8")), f"{document.name}: {target}: no such heading"
    assert "../shared" not in text, f"{document.name} names ../shared, which only the maintainers' workspace has"


def test_the_readme_is_a_front_door_that_links_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.split()) < 1500, "README.md: keep it under 1,500 words; the reference belongs in docs/"
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
