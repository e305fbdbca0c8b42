"""Every relative link and image in README.md, docs/*.md and the notebooks' markdown resolves.

A link resolves when its target exists in the checkout and is not git-ignored (so it exists in
a clone too), and when its ``#anchor``, if any, names a heading of the target (GitHub's slugs:
lowercase, punctuation but ``-`` and ``_`` dropped, each space a ``-``, ``-1``, ``-2`` ... for
repeats) or an ``<a id=...>``/``<a name=...>`` in it. Web links (``http(s)://``, ``mailto:``)
are not followed: the tests run offline.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target "title") and ![alt](target): the target up to a space or the closing parenthesis;
# one level of nested brackets in the text (e.g. an image inside a link)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(markdown: str) -> str:
    """The markdown without fenced code blocks (their lines blanked, so line numbers stay)."""
    out, fence = [], None
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (after inline markdown is rendered)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a markdown text defines: its headings' GitHub slugs and its HTML ids."""
    seen: Counter[str] = Counter()
    out = set()
    prose = _prose(markdown)
    for line in prose.splitlines():
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            out.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    out.update(_HTML_ANCHOR.findall(prose))
    return out


def links(markdown: str) -> list[str]:
    """Every link and image target in a markdown text, outside code blocks and code spans."""
    prose = _INLINE_CODE.sub("", _prose(markdown))
    return _INLINE.findall(prose) + _REFERENCE.findall(prose) + _HTML.findall(prose)


def _markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def _anchors_of(path: Path) -> set[str]:
    found = anchors(_markdown_of(path))
    if path.suffix == ".ipynb":  # Jupyter's own anchors: the heading text, spaces as '-', case kept
        for line in _prose(_markdown_of(path)).splitlines():
            m = _HEADING.match(line)
            if m:
                found.add(m.group(2).strip().replace(" ", "-"))
    return found


def _ignored(paths: list[Path]) -> set[Path]:
    """Those of ``paths`` git ignores (absent from a clone); none when git is not available."""
    if not paths:
        return set()
    try:
        r = subprocess.run(
            ["git", "check-ignore", "--no-index", "--stdin", "-z"],
            cwd=REPO,
            input="\0".join(str(p.relative_to(REPO)) for p in paths) + "\0",
            capture_output=True,
            text=True,
        )
    except OSError:
        return set()
    return {REPO / p for p in r.stdout.split("\0") if p}


def broken_links(source: Path) -> list[str]:
    """``"<file>: <link>: <reason>"`` for each link of ``source`` that does not resolve."""
    problems, targets = [], []
    for link in links(_markdown_of(source)):
        if _SCHEME.match(link) or link.startswith("//"):  # http(s), mailto, ...: not followed offline
            continue
        path_part, _, fragment = unquote(link).partition("#")
        path_part = path_part.split("?")[0]
        target = (source.parent / path_part).resolve() if path_part else source
        where = f"{source.relative_to(REPO)}: {link}"
        if not target.is_relative_to(REPO):
            problems.append(f"{where}: points outside the repository ({target})")
        elif not target.exists():
            problems.append(f"{where}: {target.relative_to(REPO)} does not exist")
        elif fragment and target.is_dir():
            problems.append(f"{where}: an anchor on a folder")
        elif fragment and target.suffix not in (".md", ".ipynb"):
            problems.append(f"{where}: an anchor in a file that has no headings ({target.suffix or 'no suffix'})")
        elif fragment and fragment not in _anchors_of(target):
            problems.append(f"{where}: no heading or anchor #{fragment} in {target.relative_to(REPO)}")
        else:
            targets.append((where, target))
    ignored = _ignored([t for _, t in targets])
    problems += [
        f"{where}: {t.relative_to(REPO)} is git-ignored (absent from a clone)" for where, t in targets if t in ignored
    ]
    return problems


def test_the_checker_finds_links_anchors_and_broken_ones(tmp_path):
    """The checker itself: links outside code, GitHub slugs, and a broken link named with its reason."""
    md = (
        "# Title: one `code` and *more*!\n\n## Title: one code and more\n\n"
        "[a](#title-one-code-and-more-1) ![img](pic.png 'title') [web](https://x.org/y) <img src=\"d/e.svg\">\n"
        "`[not](a-link)`\n\n```bash\n[no](link) # not a heading\n```\n[ref]: other.md#sec\n"
    )
    want = ["#title-one-code-and-more-1", "pic.png", "https://x.org/y", "other.md#sec", "d/e.svg"]
    assert sorted(links(md)) == sorted(want)
    assert anchors(md) == {"title-one-code-and-more", "title-one-code-and-more-1"}
    assert github_slug("2. What the authors' code does (v1.0)") == "2-what-the-authors-code-does-v10"
    assert github_slug("The step-1 ablation: `make ablation`") == "the-step-1-ablation-make-ablation"
    # a real file of the repository with a broken link, a missing anchor and a good one
    doc = REPO / "docs" / "usage.md"
    fake = doc.parent / "_links_self_test.md"
    try:
        fake.write_text("[ok](usage.md#from-python) [gone](nowhere.md) [anchor](usage.md#no-such-heading)\n")
        problems = broken_links(fake)
    finally:
        fake.unlink(missing_ok=True)
    assert len(problems) == 2, problems
    assert "docs/_links_self_test.md: nowhere.md: docs/nowhere.md does not exist" in problems
    assert "docs/_links_self_test.md: usage.md#no-such-heading: no heading or anchor #no-such-heading" in problems[1]


@pytest.mark.parametrize("source", DOCS + NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(source):
    problems = broken_links(source)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_document_is_checked():
    assert (REPO / "README.md") in DOCS and len(DOCS) >= 5 and len(NOTEBOOKS) >= 10
    assert sum(len(links(_markdown_of(p))) for p in DOCS) > 20  # the parser finds the links that are there
