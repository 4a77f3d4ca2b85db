"""The documentation's relative links and images point at files that exist, and at headings that
exist in them; the README stays short. Reads Markdown only: no Ray, no torch."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
EXTERNAL = ("http://", "https://", "mailto:")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with one level of brackets inside the text and an optional
# "title"; the target may be wrapped in <...>.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)")
HTML_TARGET = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def documentation_files(root: Path = ROOT) -> list[Path]:
    """README.md, every Markdown file under docs/, and the READMEs of cluster/ and benchmarks/."""
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md")),
             root / "cluster" / "README.md", root / "benchmarks" / "README.md"]
    return [f for f in files if f.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            lines.append("")
            continue
        lines.append(INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line))
    return lines


def link_targets(text: str) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link and image in Markdown prose."""
    found = []
    for number, line in enumerate(prose_lines(text), start=1):
        for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_TARGET):
            for match in pattern.finditer(line):
                target = match.group(1)
                if target.startswith("<") and target.endswith(">"):
                    target = target[1:-1]
                found.append((number, target))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text in lower case, punctuation other than
    ``-`` and ``_`` dropped, each space turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: heading slugs (repeats get -1, -2, ... as on GitHub)
    and explicit ``<a name=...>``/``<a id=...>``."""
    seen: dict[str, int] = {}
    out = set()
    text = path.read_text(encoding="utf-8")
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    out.update(HTML_ANCHOR.findall(text))
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per broken relative link or image in ``path``: a missing file, a path outside the
    repository, or an anchor that no heading of the target Markdown file defines."""
    problems = []
    shown = path.relative_to(root)
    for number, target in link_targets(path.read_text(encoding="utf-8")):
        if target.lower().startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        if not file_part:
            destination = path
        elif file_part.startswith("/"):
            destination = root / file_part.lstrip("/")
        else:
            destination = path.parent / file_part
        destination = destination.resolve()
        where = f"{shown}:{number}: ({target})"
        if not destination.is_relative_to(root.resolve()):
            problems.append(f"{where} points outside the repository")
            continue
        if not destination.exists():
            problems.append(f"{where} {destination.relative_to(root.resolve())} does not exist")
            continue
        if anchor and destination.suffix == ".md":
            if unquote(anchor).lower() not in anchors(destination):
                problems.append(f"{where} no heading in {destination.relative_to(root.resolve())} has the "
                                f"anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_at_most_250_lines():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_the_docs_index_links_every_page():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / unquote(t.partition("#")[0])).resolve()
              for _, t in link_targets(index.read_text(encoding="utf-8")) if not t.lower().startswith(EXTERNAL)}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p != index}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []


def test_the_readme_links_the_docs_index():
    targets = {t for _, t in link_targets((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert "docs/README.md" in targets


# -- the checker itself ---------------------------------------------------------------------------

def test_the_checker_reports_missing_files_bad_anchors_and_nothing_else(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Checkpoints, crashes and resume\n\n## Notes\n## Notes\n")
    (tmp_path / "docs" / "shot.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#checkpoints-crashes-and-resume) [ok](docs/page.md#notes-1)\n"
        "![ok](docs/shot.png) [ok](#title) [web](https://example.com/x.md#nowhere) [mail](mailto:a@b.c)\n"
        "[`code` in text](docs/page.md#a-page)\n"
        "`[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[gone](docs/gone.md) ![gone](docs/gone.png) [bad anchor](docs/page.md#checkpoints)\n"
        "[bad own anchor](#nowhere) [outside](../elsewhere.md)\n"
        "[ref]: docs/also-gone.md\n"
    )
    problems = broken_links(readme, root=tmp_path)
    assert [p.split(": (")[1].split(")")[0] for p in problems] == [
        "docs/gone.md", "docs/gone.png", "docs/page.md#checkpoints", "#nowhere", "../elsewhere.md",
        "docs/also-gone.md"]
    assert problems[0] == "README.md:10: (docs/gone.md) docs/gone.md does not exist"
    assert "no heading in docs/page.md has the anchor #checkpoints" in problems[2]


def test_slugs_follow_github():
    assert slug("Checkpoints, crashes and resume") == "checkpoints-crashes-and-resume"
    assert slug("(a) A multi-node cluster on this machine") == "a-a-multi-node-cluster-on-this-machine"
    assert slug("What `grid` values mean for each searcher") == "what-grid-values-mean-for-each-searcher"
    assert slug("scikit-learn: estimators and TorchSearchCV") == "scikit-learn-estimators-and-torchsearchcv"
    assert slug("Data sharing (`--data-sharing`)") == "data-sharing---data-sharing"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
