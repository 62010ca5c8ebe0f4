"""BENCHMARKS.md's two writers (scripts/bench/sections.py) keep each other's part."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from sections import BEGIN, END, write_algorithm_table, write_benchmarks  # noqa: E402

pytestmark = pytest.mark.unit

TABLE = f"{BEGIN}\n## Algorithms\n| GRPO | 21.5% |\n{END}"


def test_benchmarks_rewrite_keeps_the_algorithm_table(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    write_benchmarks(md, "# Benchmarks\nold figures\n")
    assert md.read_text() == "# Benchmarks\nold figures\n"  # no table yet: the report alone
    write_algorithm_table(md, TABLE)
    assert md.read_text() == "# Benchmarks\nold figures\n\n" + TABLE + "\n"
    write_benchmarks(md, "# Benchmarks\nnew figures\n")
    assert md.read_text() == "# Benchmarks\nnew figures\n\n" + TABLE + "\n"  # old figures gone, table kept


def test_algorithm_table_rewrite_keeps_the_benchmarks(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\nfigures\n\n" + TABLE + "\n\ntrailing note\n")
    new = TABLE.replace("21.5%", "22.0%")
    write_algorithm_table(md, new)
    assert md.read_text() == "# Benchmarks\nfigures\n\n" + new + "\n\ntrailing note\n"
