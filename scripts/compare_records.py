#!/usr/bin/env python
"""Compare two evaluation record files record by record; exit 1 on any difference.

    python scripts/compare_records.py before/records.jsonl after/records.jsonl --ignore timing host

Records are matched by ``(scenario, arm, seed)`` and compared as parsed JSON, so key order (in the file or in
a nested config) does not matter but every value does, exactly: a refactoring that claims to keep behaviour
must reproduce the same numbers bit for bit. ``--ignore`` names top-level keys or dotted paths
(``timing``, ``host``, ``versions.lbw_env``) left out of the comparison. Each difference is printed as a
dotted path with both values; records present in only one file are differences too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lbw_env.errors import error_line

Key = tuple[str, str, int]


def load(path: Path) -> dict[Key, dict[str, Any]]:
    """Records of a ``records.jsonl`` by key; a torn last line and later duplicates are ignored, as the store
    does."""
    data = path.read_bytes()
    out: dict[Key, dict[str, Any]] = {}
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        if line.strip():
            record = json.loads(line)
            out.setdefault((str(record["scenario"]), str(record["arm"]), int(record["seed"])), record)
    return out


def differences(a: Any, b: Any, path: str = "", ignore: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """``(dotted path, what differs)`` wherever ``a`` and ``b`` differ (lists by element, dicts by key)."""
    if path in ignore:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if sub in ignore:
                continue
            if k not in a or k not in b:
                yield sub, f"only in {'B' if k not in a else 'A'}"
            else:
                yield from differences(a[k], b[k], sub, ignore)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]", ignore)
    elif type(a) is not type(b) or a != b:  # 1 == 1.0 == True in Python, but not in a record
        yield path, f"{_short(a)} != {_short(b)}"


def _short(x: Any, limit: int = 80) -> str:
    text = json.dumps(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(
    a: dict[Key, dict[str, Any]], b: dict[Key, dict[str, Any]], ignore: Sequence[str] = ()
) -> list[tuple[Key, str, str]]:
    """Every difference between two record sets: ``(record key, dotted path, what differs)``; the path is
    empty for a record present in only one of them."""
    skip = frozenset(ignore)
    out: list[tuple[Key, str, str]] = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append((key, "", "record only in A"))
        elif key not in a:
            out.append((key, "", "record only in B"))
        else:
            out += [(key, path, what) for path, what in differences(a[key], b[key], ignore=skip)]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="records.jsonl A")
    p.add_argument("b", type=Path, help="records.jsonl B")
    p.add_argument("--ignore", nargs="*", default=[], metavar="KEY", help="top-level keys or dotted paths to skip")
    args = p.parse_args(argv)
    try:
        a, b = load(args.a), load(args.b)
    except (OSError, ValueError, KeyError) as e:  # a missing file, a line that is not a record
        print(error_line("compare_records.py", e), file=sys.stderr)
        return 2
    diffs = compare(a, b, args.ignore)
    for key, path, what in diffs:
        print(f"{key} {path}: {what}" if path else f"{key}: {what}")
    if diffs:
        top = sorted({path.split(".")[0].split("[")[0] for _, path, _ in diffs if path})
        print(f"DIFFERENT: {len(diffs)} difference(s) in keys: {', '.join(top) or '(whole records)'}", file=sys.stderr)
        return 1
    ignoring = f" (ignoring {', '.join(args.ignore)})" if args.ignore else ""
    print(f"identical: {len(a)} records{ignoring}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
