"""BENCHMARKS.md's writers (scripts/bench/sections.py) keep each other's parts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from sections import BEGIN, END, markers, write_algorithm_table, write_benchmarks, write_section  # noqa: E402

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


def test_every_marked_section_survives_the_others(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    other_begin, other_end = markers("engine_batch")
    other = f"{other_begin}\n## Engine batch\n| 1.2 s |\n{other_end}"
    write_benchmarks(md, "# Benchmarks\nfigures\n")
    write_algorithm_table(md, TABLE)
    write_section(md, "engine_batch", other)
    write_benchmarks(md, "# Benchmarks\nnew figures\n")
    assert md.read_text() == "# Benchmarks\nnew figures\n\n" + TABLE + "\n\n" + other + "\n"
    new_other = other.replace("1.2 s", "1.0 s")
    write_section(md, "engine_batch", new_other)
    assert md.read_text() == "# Benchmarks\nnew figures\n\n" + TABLE + "\n\n" + new_other + "\n"
