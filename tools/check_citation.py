"""Validate ``CITATION.cff`` against the Citation File Format 1.2.0 schema, offline.

What ``cffconvert --validate`` does (the same schema, YAML timestamps read as strings, formats
checked), without cffconvert itself: its only release (2.0.0) requires ``jsonschema<4``, which
cannot be installed beside JupyterLab (``jsonschema>=4.18``). ``cff-1.2.0.schema.json`` beside
this file is the official schema (https://citation-file-format.github.io/1.2.0/schema.json,
CC-BY-4.0, as shipped in cffconvert 2.0.0's wheel).

    python tools/check_citation.py [CITATION.cff]

Exit code 0 and one line when the file is valid; otherwise 1 and one line per problem, naming the
file, the key (as a path like ``references.0.authors.1``) and what is wrong.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).with_name("cff-1.2.0.schema.json")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, with dates kept as strings (the schema expects ``date-released: "2023-06-18"``)."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def problems(path: Path) -> list[str]:
    """One message per problem of the CFF file at ``path`` (empty: valid)."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # a SafeLoader subclass
    except OSError as e:
        return [f"{path}: unreadable: {e}"]
    except yaml.YAMLError as e:
        return [f"{path}: invalid YAML: {e}"]
    if not isinstance(doc, dict):
        return [f"{path}: the top level must be a mapping"]
    if doc.get("cff-version") != "1.2.0":
        return [f"{path}: cff-version: {doc.get('cff-version')!r}, this check knows 1.2.0 only"]
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in err.absolute_path) or "top level"
        out.append(f"{path}: {where}: {err.message}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "CITATION.cff")
    found = problems(path)
    for p in found:
        print(p, file=sys.stderr)
    if not found:
        print(f"{path}: valid Citation File Format 1.2.0")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
