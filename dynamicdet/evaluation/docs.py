"""Tables in README.md and docs/*.md, generated from the results files so they cannot drift.

A document marks each table it shows with a pair of comments; everything between them is
generated::

    <!-- table: results/standard/claims.csv -->
    ...generated...
    <!-- /table -->

The source is a CSV (rendered here: the claims scorecard by :func:`dynamicdet.evaluation.claims.to_markdown`,
any other table with ``columns=a,b,c`` to pick columns) or a Markdown file (included as it is,
e.g. ``results/bench.md``). ``make docs`` (``python -m dynamicdet.evaluation.docs``) rewrites the blocks;
``tests/test_docs.py`` fails when a committed block differs from what its source renders.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from dynamicdet import paths
from dynamicdet.evaluation.claims import to_markdown
from dynamicdet.files import write_text

BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
FLOATFMT = ".3f"


def documents() -> list[Path]:
    """README.md and every page of docs/."""
    return [paths.REPO_ROOT / "README.md", *sorted((paths.REPO_ROOT / "docs").glob("*.md"))]


def render_source(spec: str) -> str:
    """The Markdown of one block's source (``path [columns=a,b]``, path relative to the repository)."""
    parts = spec.split()
    path = paths.REPO_ROOT / parts[0]
    options = dict(p.split("=", 1) for p in parts[1:])
    unknown = set(options) - {"columns"}
    if unknown:
        raise ValueError(f"table block {spec!r}: unknown option(s) {sorted(unknown)} (known: columns)")
    if not path.exists():
        raise FileNotFoundError(f"table block {spec!r}: {path} does not exist (run the job that writes it)")
    if path.suffix == ".md":
        return path.read_text()
    df = pd.read_csv(path)
    if path.stem == "claims":
        return to_markdown(df)
    if "columns" in options:
        cols = options["columns"].split(",")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"table block {spec!r}: {path.name} has no column(s) {missing}")
        df = df[cols]
    return df.to_markdown(index=False, floatfmt=FLOATFMT) + "\n"


def render(text: str) -> str:
    """``text`` with every table block regenerated from its source."""
    return BLOCK.sub(lambda m: m.group(1) + render_source(m.group("spec").strip()) + m.group(4), text)


def stale(doc: Path) -> list[str]:
    """The sources of the blocks of ``doc`` whose committed text differs from their rendering."""
    return [
        m.group("spec").strip()
        for m in BLOCK.finditer(doc.read_text())
        if m.group("body") != render_source(m.group("spec").strip())
    ]


def update(docs: list[Path] | None = None) -> list[Path]:
    """Rewrite the table blocks of ``docs`` (default: :func:`documents`); returns the files changed."""
    changed = []
    for doc in docs or documents():
        text = doc.read_text()
        new = render(text)
        if new != text:
            write_text(new, doc)
            changed.append(doc)
    return changed


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description="Regenerate the tables of README.md and docs/*.md from results/.").parse_args(
        argv
    )
    changed = update()
    print("updated: " + ", ".join(str(p.relative_to(paths.REPO_ROOT)) for p in changed) if changed else "up to date")


if __name__ == "__main__":
    main()
