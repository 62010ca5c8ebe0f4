"""BENCHMARKS.md has two writers: scripts/bench/run.py (the benchmarks, from the top) and
scripts/algorithm_table.py (the algorithm table, between the markers below). Each keeps the other's part."""

from __future__ import annotations

from pathlib import Path

BEGIN, END = "<!-- algorithm_table:begin -->", "<!-- algorithm_table:end -->"


def write_benchmarks(md: Path, text: str) -> None:
    """`md` = `text`, then the algorithm table's section as it was (if there was one)."""
    old = md.read_text(encoding="utf-8") if md.exists() else ""
    if BEGIN in old and END in old:
        text = text.rstrip("\n") + "\n\n" + BEGIN + old.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    md.write_text(text, encoding="utf-8")


def write_algorithm_table(md: Path, section: str) -> None:
    """Replace the text between the markers (inclusive); append the section if they are absent."""
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    md.write_text(text, encoding="utf-8")
