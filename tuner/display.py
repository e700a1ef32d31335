"""What the terminal shows of results: tables and value lists rounded for reading, tables never wider
than the terminal.

A table wider than the terminal leaves out columns in the order its caller names as droppable and says
which; the files a command writes (CSV, markdown) keep every column and full precision.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

DEFAULT_WIDTH = 80
DISPLAY_DIGITS = 4
"""Significant digits of a float in a console table (287.3, 0.0003124)."""
_MEASURE_WIDTH = 10_000  # wide enough that rich measures a table's own width, not the console's


def console_table(
    rows: Sequence[Mapping[str, Any]] | pd.DataFrame,
    title: str | None = None,
    width: int = DEFAULT_WIDTH,
    droppable: Sequence[str] = (),
    full_in: str = "",
) -> str:
    """Render ``rows`` (dicts or a data frame) as a plain-text rich table at most ``width`` characters
    wide, for ``console.print``.

    Columns are the data frame's, or the keys of the dicts in order of first appearance; numbers are
    right-aligned, floats shown with :data:`DISPLAY_DIGITS` significant digits, missing values blank.
    While the table is wider than ``width``, the ``droppable`` columns are left out one by one in that
    order, and a last line names them (and ``full_in``, where every column is); if it is still too wide,
    rich folds its text cells.
    """
    records, columns = _records(rows)
    dropped: list[str] = []
    table = _table(records, columns, title)
    for name in droppable:
        if _natural_width(table) <= width:
            break
        if name in columns:
            columns = [c for c in columns if c != name]
            dropped.append(str(name))
            table = _table(records, columns, title)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    if dropped:
        where = f" (see {full_in})" if full_in else ""
        console.print(f"not shown at {width} columns: {', '.join(dropped)}{where}", markup=False)
    return buffer.getvalue()


def display_value(value: Any, digits: int = DISPLAY_DIGITS) -> str:
    """One cell as text: floats to ``digits`` significant digits, integers and booleans as they are,
    missing values (None, NaN) blank."""
    if is_missing(value):
        return ""
    if isinstance(value, bool | numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number) and abs(number) >= 10**digits:
            return f"{number:.0f}"  # 12346, not 1.235e+04
        return f"{number:.{digits}g}"
    return str(value)


def describe_values(values: Mapping[str, Any], digits: int = DISPLAY_DIGITS) -> str:
    """Config values for a console line: ``n_steps=128, gamma=0.9983, learning_rate=0.0003124`` (floats
    to ``digits`` significant digits; the exact values are in the trials table and the runs)."""
    return ", ".join(f"{name}={_short(value, digits)}" for name, value in values.items())


def _short(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(item, digits) for item in value) + "]"
    return str(value)


def _table(records: Sequence[Mapping[str, Any]], columns: Sequence[Any], title: str | None) -> Table:
    table = Table(title=Text(title) if title else None)
    for column in columns:
        numeric = all(_is_number(r.get(column)) for r in records if not is_missing(r.get(column)))
        table.add_column(Text(str(column)), justify="right" if numeric and records else "left")
    for record in records:
        table.add_row(*(Text(display_value(record.get(column))) for column in columns))
    return table


def _natural_width(table: Table) -> int:
    """How wide ``table`` is drawn with no cell folded."""
    return Console(width=_MEASURE_WIDTH).measure(table).maximum


def _records(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> tuple[list[Mapping[str, Any]], list[Any]]:
    if isinstance(rows, pd.DataFrame):
        return list(rows.to_dict("records")), list(rows.columns)
    records = list(rows)
    return records, list(dict.fromkeys(key for record in records for key in record))


def is_missing(value: Any) -> bool:
    """Whether a table cell has no value: None, NaN or pandas' NA."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
