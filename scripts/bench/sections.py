"""BENCHMARKS.md has several writers: scripts/bench/run.py (the benchmarks, from the top) and scripts
that own one marked section each (scripts/algorithm_table.py: "algorithm_table";
scripts/bench_engine_batch.py: "engine_batch"). Each keeps the others' parts."""

from __future__ import annotations

import json
import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


BEGIN, END = markers("algorithm_table")
_SECTION = re.compile(r"<!-- ([a-z_]+):begin -->.*?<!-- \1:end -->", re.S)


def write_benchmarks(md: Path, text: str) -> None:
    """`md` = `text`, then every marked section as it was (in their old order)."""
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    kept = [m.group(0) for m in _SECTION.finditer(old)]
    if kept:
        text = text.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n"
    md.write_text(text, encoding="utf-8")


def write_section(md: Path, name: str, section: str) -> None:
    """Replace section `name` (markers inclusive; `section` carries them); append it if it is absent."""
    begin, end = markers(name)
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text, encoding="utf-8")


def write_algorithm_table(md: Path, section: str) -> None:
    write_section(md, "algorithm_table", section)


def publish(payload: dict, out: Path, md: Path, name: str, text: str) -> None:
    """A section-owning script's results: the JSON to `out`, its section into `md`, the section printed."""
    out.write_text(json.dumps(payload, indent=1))
    write_section(md, name, text)
    print(text)
