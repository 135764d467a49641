"""points.csv (bench/sweep/schema.py): the documented columns, round trips, foreign files."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import SchemaError
from bench.sweep.schema import COLUMNS, SCHEMA_VERSION, markdown_documentation, read_points, write_points
from bench_points import sweep_row, three_backends

ROOT = Path(__file__).resolve().parent.parent


def test_results_readme_documents_every_column():
    assert (ROOT / "results" / "README.md").read_text() == markdown_documentation()


def test_round_trip_keeps_types_and_empty_cells(tmp_path):
    rows = [sweep_row("paddle", 128), sweep_row("hf", 1024, status="oom")]
    write_points(tmp_path, rows)
    back = read_points(tmp_path)
    assert back[0]["prompt_tokens"] == 128 and isinstance(back[0]["prompt_tokens"], int)
    assert back[0]["ttft_ms_mean"] == 500.0 and back[1]["ttft_ms_mean"] is None
    assert back[1]["message"] == "out of memory" and back[0]["gpu_name"] is None
    assert (tmp_path / "points.csv").read_text().splitlines()[0].split(",") == COLUMNS


def test_columns_outside_the_schema_are_refused(tmp_path):
    with pytest.raises(AssertionError, match="outside the schema"):
        write_points(tmp_path, [sweep_row(invented_ms=1.0)])


def test_other_schema_version_is_refused_everywhere_and_untouched(tmp_path):
    run = three_backends(tmp_path / "run")
    text = (run / "points.csv").read_text().replace(f"\n{SCHEMA_VERSION},", "\n99,")
    (run / "points.csv").write_text(text)
    with pytest.raises(SchemaError, match="schema version 99"):
        read_points(run)
    for args in (("report", run), ("compare", run, run), ("plot", run),
                 ("recommend", run, "--memory", "24GB"),
                 ("run", "--variants", "tiny", "--out", run, "--resume")):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1 and "schema version 99" in result.output, args
        assert len(result.output.strip().splitlines()) == 1
    assert (run / "points.csv").read_text() == text
    assert not (run / "report.md").exists()


def test_a_file_missing_a_column_is_refused(tmp_path):
    run = three_backends(tmp_path / "run")
    lines = (run / "points.csv").read_text().splitlines()
    (run / "points.csv").write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines))
    with pytest.raises(SchemaError, match="column 'pct_of_floor' missing"):
        read_points(run)
