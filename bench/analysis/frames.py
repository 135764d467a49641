"""A run's `points.csv` as a pandas DataFrame (one point, one row; schema in bench/sweep/schema.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import BenchError
from ..sweep.schema import COLUMNS, DEFAULTED, ENV_FILE, NUMERIC, read_points

SHAPE = ("variant", "dtype", "device", "prompt_tokens", "new_tokens", "batch",
         "tensor_parallel")  # one request shape


def points_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows (as `read_points` gives them, or partial dicts) with every schema column; numeric
    columns are floats or ints with NaN for empty cells, the others strings or None."""
    if isinstance(rows, pd.DataFrame):
        frame = rows.reindex(columns=COLUMNS)
    else:
        frame = pd.DataFrame.from_records(list(rows), columns=COLUMNS)
    numeric = [c for c in COLUMNS if c in NUMERIC]
    converted = frame[numeric].apply(pd.to_numeric, errors="coerce")
    for column, default in DEFAULTED.items():  # columns older runs (or partial rows) lack
        converted[column] = converted[column].fillna(int(default)).astype(int)
    return pd.concat([frame.drop(columns=numeric), converted], axis=1)[COLUMNS]


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """`points.csv` (checked against the schema) and `env.json` of a run directory."""
    frame = points_frame(read_points(run_dir))
    env_path = Path(run_dir) / ENV_FILE
    env = {}
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"{env_path}: unreadable ({exc}); rerun or remove the file") from None
    return frame, env


def ok_points(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for missing values (for JSON)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{k: _plain(v) for k, v in row.items()} for row in clean.to_dict("records")]


def _plain(value):
    """numpy scalars to Python numbers, so json.dumps takes them."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
