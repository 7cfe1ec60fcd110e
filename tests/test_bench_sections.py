"""The bench scripts rewrite their own section of docs/benchmarks.md in place: the notes written under a
table (`###` subsections) and every other section stay where they were."""

from __future__ import annotations

from pathlib import Path

from bench.gym_throughput import update_section

DOC = """# Benchmarks

## A (bench/a.py)

old table of A

### Session 8: why A moved

notes about A

## A (bench/a.py), groups of 4

old table of A4

## B

table of B
"""


def test_a_section_is_replaced_in_place_and_its_notes_stay(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    update_section(doc, "## A (bench/a.py)", "## A (bench/a.py)\n\nnew table of A\n")
    update_section(doc, "## A (bench/a.py), groups of 4", "## A (bench/a.py), groups of 4\n\nnew table of A4\n")
    text = doc.read_text()
    assert "old table" not in text and text.count("new table of A\n") == 1 and text.count("new table of A4") == 1
    order = ["## A (bench/a.py)\n", "new table of A\n", "### Session 8: why A moved", "notes about A", "## A (bench/a.py), groups of 4", "new table of A4", "## B", "table of B"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    update_section(doc, "## C", "## C\n\ntable of C\n")  # a new section goes at the end
    assert doc.read_text().rstrip().endswith("## C\n\ntable of C")


def test_a_script_naming_its_section_by_the_heading_s_beginning_replaces_it_too(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    update_section(doc, "## A", "## A (bench/a.py), groups of 4\n\nnew table of A4\n")  # the heading its text writes
    text = doc.read_text()
    assert "old table of A4" not in text and "old table of A\n" in text and text.count("## A (bench/a.py), groups of 4") == 1
    assert text.index("new table of A4") < text.index("## B")
