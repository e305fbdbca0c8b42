"""Tables in README.md and docs/*.md, generated from the results files so they cannot drift.

A document marks each table it shows with a pair of comments; everything between them is
generated::

    <!-- table: results/standard/claims.csv -->
    ...generated...
    <!-- /table -->

The source is a CSV (rendered here: the claims scorecard by :func:`dynamicdet.evaluation.claims.to_markdown`,
any other table with ``columns=a,b,c`` to pick columns, quoted when a name has spaces) or a Markdown
file (included as it is, e.g. ``results/bench.md``). ``make docs`` (``python -m dynamicdet.evaluation.docs``)
rewrites the blocks; ``tests/test_docs.py`` fails when a committed block differs from what its source renders.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pandas as pd

from dynamicdet import paths
from dynamicdet.evaluation.claims import to_markdown
from dynamicdet.evaluation.evidence import is_true
from dynamicdet.files import write_text

BLOCK = re.compile(r"(<!-- table: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
FLOATFMT = ".3f"


def documents() -> list[Path]:
    """README.md and every page of docs/."""
    return [paths.REPO_ROOT / "README.md", *sorted((paths.REPO_ROOT / "docs").glob("*.md"))]


def render_source(spec: str) -> str:
    """The Markdown of one block's source (``path [columns=a,b]``, path relative to the repository; split like a
    shell line, so ``columns="a b,c"`` names a column with spaces)."""
    parts = shlex.split(spec)
    path = paths.REPO_ROOT / parts[0]
    options = dict(p.split("=", 1) if "=" in p else (p, "") for p in parts[1:])
    unknown = set(options) - {"columns", "words", "routers"}
    if unknown:
        raise ValueError(f"table block {spec!r}: unknown option(s) {sorted(unknown)} (known: columns, words, routers)")
    if not path.exists():
        raise FileNotFoundError(f"table block {spec!r}: {path} does not exist (run the job that writes it)")
    if path.suffix == ".md":
        return path.read_text()
    df = pd.read_csv(path)
    if path.stem == "claims":
        if "routers" in options:
            return routers_in_words(df)
        return claims_in_words(df) if "words" in options else to_markdown(df)
    if "words" in options:
        if GAP not in df.columns:
            raise ValueError(f"table block {spec!r}: 'words' renders claims.csv or a trainer comparison ({GAP!r})")
        return gap_in_words(df)
    if "columns" in options:
        cols = options["columns"].split(",")
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"table block {spec!r}: {path.name} has no column(s) {missing}")
        df = df[cols]
    # empty cells, not "nan", where a row does not have a column
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=FLOATFMT) + "\n"


VERDICT_ORDER = ("reproduced", "contradicted", "not decided", "one run", "two runs", "not testable")


def _points(row: dict) -> bool:
    """Whether a claim's margin is AP (its bar or its paper effect is in AP)."""
    return "AP" in str(row["paper effect"]) or "AP" in str(row["bar"])


def _claim_parts(row: dict) -> tuple[str, str]:
    """One scorecard row in words: ``(what the paper reports, this run's margin with its verdict)``."""
    margin = ""
    if pd.notna(row["margin"]):
        scale = 100 if _points(row) else 1
        unit = " AP" if scale == 100 else ""
        fmt = "+.1f" if scale == 100 else "+.3f"
        margin = f"{row['margin'] * scale:{fmt}}{unit}"
        lo, hi = ("ci90 lo", "ci90 hi") if pd.notna(row.get("ci90 lo")) else ("ci95 lo", "ci95 hi")
        if pd.notna(row[lo]):
            level = "90%" if lo.startswith("ci90") else "95%"
            margin += f" [{row[lo] * scale:{fmt}}, {row[hi] * scale:{fmt}}] ({level})"
        margin += f" over {int(row['runs'])} run{'s' if row['runs'] != 1 else ''}"
    verdict = str(row["verdict"]) + (f": {row['qualifier']}" if pd.notna(row["qualifier"]) else "")
    note = f" ({row['note']})" if pd.notna(row["note"]) and row["verdict"] == "not testable" else ""
    here = f"here {margin}. " if margin else ""
    effect = "" if str(row["paper effect"]) == "not reported" else f", effect {row['paper effect']}"
    budget = (
        " At twice the epochs (seed 0) the margin changes sign."
        if is_true(row.get("sign differs at 2x epochs"))
        else ""
    )
    return f"paper {row['paper']}{effect}", f"{here}*{verdict}*{note}.{budget}"


def _claim_group(claim: str) -> tuple[str, str]:
    """``(the claim, its variant)``: one claim in several cost measures (``..., by GFLOPs``) or by the paper's
    router (``... (paper's router)``) is one line; the variant is ``""`` for the default router."""
    if claim.endswith(PAPER_ROUTER):
        return claim.removesuffix(PAPER_ROUTER), "the paper's router"
    stem, by, cost = claim.partition(", by ")
    return stem, by.strip(", ") + " " + cost if by else ""


def claims_in_words(df: pd.DataFrame) -> str:
    """The scorecard (``claims.csv``) as a count of verdicts and one line per claim in plain words.

    Each line: the claim, what the paper reports, this run's margin with its interval and number of
    runs (AP margins also in AP points, the paper's unit), and the verdict with its qualifier; a claim
    scored in several cost measures or for both routers gives one sentence per measure or router.
    """
    counts = df["verdict"].value_counts()
    parts = [f"{counts[v]} {v}" for v in VERDICT_ORDER if v in counts]
    lines = [f"Of the {len(df)} claims in scope: " + ", ".join(parts) + ".", ""]
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for r in df.itertuples(index=False):
        row = dict(zip(df.columns, r, strict=True))
        stem, variant = _claim_group(str(row["claim"]))
        groups.setdefault(stem, []).append((variant, *_claim_parts(row)))
    for stem, rows in groups.items():
        if len(rows) == 1:
            variant, paper, here = rows[0]
            name = (
                f"{stem}{PAPER_ROUTER}"
                if variant == "the paper's router"
                else (f"{stem}, {variant}" if variant else stem)
            )
            lines.append(f"- **{name}**: {paper}; {here}")
            continue
        same_paper = len({paper for _, paper, _ in rows}) == 1
        text = f"- **{stem}**" + (f": {rows[0][1]}." if same_paper else ".")
        for variant, paper, here in rows:
            label = variant or "the default router"
            text += f" {label[0].upper()}{label[1:]}: " + (here if same_paper else f"{paper}; {here}")
        lines.append(text)
    return "\n".join(lines) + "\n"


ROUTER_CLAIM = "the router beats random routing at /50"
PAPER_ROUTER = " (paper's router)"


def routers_in_words(df: pd.DataFrame) -> str:
    """One sentence: the default router and the paper's side by side at /50 (Dy /50's AP and its lead over random
    routing in AP points, with the interval and the number of runs), from the scorecard's two rows of that claim."""
    rows = df.set_index("claim")
    parts = []
    for name, claim in (("the default router", ROUTER_CLAIM), ("the paper's router", ROUTER_CLAIM + PAPER_ROUTER)):
        if claim not in rows.index or pd.isna(rows.loc[claim, "margin"]):
            parts.append(f"{name}: not measured")
            continue
        r = rows.loc[claim]
        text = f"{name}'s Dy /50 reaches {r['this run']:.3f} AP, {100 * r['margin']:+.2f} AP points over random routing"
        if pd.notna(r["ci95 lo"]):
            text += f" [{100 * r['ci95 lo']:+.2f}, {100 * r['ci95 hi']:+.2f}]"
        runs, verdict = int(r["runs"]), str(r["verdict"])
        verdict = "" if verdict in ("one run", "two runs") else f", {verdict}"
        parts.append(text + f" ({runs} run{'s' if runs != 1 else ''}{verdict})")
    return "At /50, " + "; ".join(parts) + ".\n"


GAP = "ours - ultralytics"


def gap_in_words(df: pd.DataFrame) -> str:
    """A trainer comparison (:func:`dynamicdet.experiments.seeds.summary.gap_table`) in one sentence: each
    trainer's mean AP over its seeds, the difference with Welch's 95% interval, and what the interval says."""
    rows = df.astype({"seed": str}).set_index("seed")
    runs = rows.drop(index=[i for i in ("mean", "std", "ci95 lo", "ci95 hi") if i in rows.index])
    n_ours, n_theirs = (int(runs[c].notna().sum()) for c in ("our loop", "ultralytics"))
    if "mean" not in rows.index:
        return f"Too few runs to compare ({n_ours} of our loop, {n_theirs} of ultralytics' trainer).\n"
    d, lo, hi = (float(rows.loc[i, GAP]) for i in ("mean", "ci95 lo", "ci95 hi"))
    if lo > 0:
        reading = "our loop is higher"
    elif hi < 0:
        reading = "our loop is lower"
    else:
        reading = "the interval contains 0: no difference beyond the seed spread"
    return (
        f"Our loop {rows.loc['mean', 'our loop']:.3f} AP over {n_ours} seeds, ultralytics' trainer "
        f"{rows.loc['mean', 'ultralytics']:.3f} over {n_theirs}: difference {d:+.3f}, Welch 95% interval "
        f"[{lo:+.3f}, {hi:+.3f}]; {reading}.\n"
    )


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
