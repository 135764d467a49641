"""Rendering a table (a DataFrame of already formatted cells) as text, markdown or CSV."""
from __future__ import annotations

import math

import pandas as pd

FORMATS = ("text", "markdown", "csv", "json")


def cell(value, decimals: int | None) -> str:
    """`-` for missing, thousands separators for numbers, `codegen-` dropped from names."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if decimals is None or not isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).replace("codegen-", "")
    return f"{value:,.{decimals}f}"


def format_columns(frame: pd.DataFrame, spec: list[tuple[str, str, int | None]]) -> pd.DataFrame:
    """The columns of `spec` (column, heading, decimals), formatted, under their headings."""
    return pd.DataFrame({heading: [cell(v, decimals) for v in frame[column].tolist()]
                         for column, heading, decimals in spec}, index=frame.index)


def render_text(table: pd.DataFrame) -> str:
    headings = [str(h) for h in table.columns]
    rows = table.astype(str).values.tolist()
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headings)]

    def line(items):
        return "  ".join(x.rjust(w) for x, w in zip(items, widths)).rstrip()

    return "\n".join([line(headings), line(["-" * w for w in widths])] + [line(r) for r in rows])


def render_markdown(table: pd.DataFrame) -> str:
    out = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(out + ["| " + " | ".join(map(str, r)) + " |"
                            for r in table.astype(str).values.tolist()])


def render_table(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "markdown":
        return render_markdown(table)
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    return render_text(table)
