"""Every relative link in the README, the pages under docs/ and the subprojects' READMEs points to a
file that exists and, where it names an anchor, to a heading of that file (GitHub's anchor rules), so
moving a section between pages cannot leave a link behind."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("*/README.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text):
    """The lines outside fenced code blocks, with inline code removed (a `[x](y)` in code is no link)."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "", line)


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to
    '-', a repeated anchor suffixed -1, -2, ..."""
    seen = {}
    result = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_anchor_rules_match_github():
    """The slugs of headings with code, punctuation and Greek letters, worked out by hand from GitHub's rule."""
    page = REPO / "docs" / "methods.md"
    assert {"pocl-for-image-classification-this-frameworks-extension", "the-divergences-abkdlosses", "the-α-β-divergence"} <= anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{target}: no file {linked}")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{target}: no heading with anchor '{anchor}' in {linked.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted(REPO.glob("docs/*.md"))
    assert pages
    assert [p.name for p in pages if f"](docs/{p.name})" not in readme] == []
    for p in pages:
        assert "](../README.md)" in p.read_text(encoding="utf-8"), f"{p.relative_to(REPO)} does not link back to the README"
