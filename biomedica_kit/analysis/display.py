"""How notebooks show tables: formatted HTML (numbers right-aligned with thousands
separators, shares as percentages, text escaped and unquoted, missing values as a dash)
instead of polars' default, which quotes every string."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "PLAIN_INTEGERS", "Table", "display_defaults", "human_bytes", "table_html",
]


def display_defaults() -> None:
    """Notebook display settings: whole tables (up to 100 rows) and long text cells.

    Why: polars truncates tables at 10 rows and strings at 30 characters by default, which
    hides rows of the summaries these notebooks exist to show.
    """
    import polars as pl

    pl.Config.set_tbl_rows(100)
    pl.Config.set_fmt_str_lengths(120)
    pl.Config.set_tbl_width_chars(160)
    pl.Config.set_tbl_hide_column_data_types(True)
    pl.Config.set_tbl_hide_dataframe_shape(True)
    try:
        from IPython import get_ipython
    except ImportError:  # not in IPython: nothing to register
        return
    shell = get_ipython()
    if shell is not None:  # HTML of every DataFrame shown: formatted, as Table does it
        shell.display_formatter.formatters["text/html"].for_type(pl.DataFrame, table_html)


# ----------------------------------------------------------------------------------- tables

_TABLE_CSS = ("<style>.bk-table{border-collapse:collapse;font:13px/1.4 system-ui,sans-serif;"
              "margin:4px 0}.bk-table th,.bk-table td{padding:3px 10px;border-bottom:1px solid "
              "#e3e6ec;vertical-align:top}.bk-table td.n{font-variant-numeric:tabular-nums}"
              ".bk-table .na{color:#9aa1b1}"
              ".bk-table caption{text-align:left;color:#4a5366;padding:2px 0 6px}</style>")
#: Integer columns that are identifiers or years, not quantities: no thousands separator.
PLAIN_INTEGERS = re.compile(r"(^|_)(year|pmid|id|index|offset)$")
# Alignment is inline: JupyterLab's own table CSS (right-aligned cells) would win otherwise.
_ALIGN = {True: ' class="n" style="text-align:right"', False: ' style="text-align:left"'}


def _cell(value: Any, fmt: str | None) -> tuple[str, bool]:
    """``(html, is_number)`` of one table cell."""
    if value is None:
        return '<span class="na">—</span>', False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int | float):
        if fmt == "percent":
            return f"{value:.1%}", True
        if fmt == "bytes":
            return human_bytes(int(value)), True
        if fmt == "plain":
            return str(value), True
        return (f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"), True
    if isinstance(value, list | tuple):
        return html.escape(", ".join(str(v) for v in value)), False
    return html.escape(str(value)), False


def table_html(df: pl.DataFrame, formats: dict[str, str] | None = None,
               caption: str = "", max_rows: int = 100) -> str:
    """A DataFrame as an HTML table: numbers right-aligned with separators (years and ids
    without), ``share`` columns (and those ``formats`` marks ``"percent"``) as percentages,
    ``"bytes"`` as KiB/MiB, ``"plain"`` without separators, text escaped and unquoted,
    missing values as a dash."""
    fmts = {c: "percent" for c in df.columns
            if (c == "share" or c.endswith("_share")) and df.schema[c].is_float()}
    fmts.update({c: "plain" for c in df.columns
                 if df.schema[c].is_integer() and PLAIN_INTEGERS.search(c)})
    fmts.update(formats or {})
    numeric = {c for c in df.columns if df.schema[c].is_numeric()}
    head = "".join(f"<th{_ALIGN[c in numeric]}>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.head(max_rows).iter_rows():
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            text, num = _cell(v, fmts.get(c))
            cells.append(f"<td{_ALIGN[num]}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (f'<tr><td colspan="{df.width}" class="na">… {df.height - max_rows:,} more rows'
            "</td></tr>" if df.height > max_rows else "")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    if df.height == 0:
        rows = [f'<tr><td colspan="{max(1, df.width)}" class="na">no rows</td></tr>']
    return (f'{_TABLE_CSS}<table class="bk-table">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}{more}</tbody></table>")


@dataclass
class Table:
    """A table to display: ``df`` (the data, a polars DataFrame), per-column ``formats``
    (``"percent"``, ``"bytes"``, ``"text"``) and a ``caption``. Notebooks show it as a
    formatted HTML table, plain-text renderers as the DataFrame."""

    df: pl.DataFrame
    formats: dict[str, str] = field(default_factory=dict)
    caption: str = ""

    def _repr_html_(self) -> str:
        return table_html(self.df, self.formats, self.caption)

    def __repr__(self) -> str:
        return (f"{self.caption}\n" if self.caption else "") + repr(self.df)


def human_bytes(n: int) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size):,} B" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"
