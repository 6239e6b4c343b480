"""A user's file as a table of text cells: CSV in any common dialect (sniffed), or Parquet.

:class:`Layout` says how the table maps onto series (which column is the timestamp, the target,
the series id, the covariates; how timestamps are written); :func:`read_table` reads a file's
header and rows, as text, for :mod:`._reader` to parse: CSV with its delimiter sniffed (``,``
``;`` tab ``|``) unless given, quoting as the csv module reads it, a BOM allowed; Parquet
(``.parquet``, ``.pq``) through pyarrow, imported only then.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: The delimiters sniffing considers.
DELIMITERS = ",;\t|"
#: How much of a CSV sniffing reads.
_SNIFF_BYTES = 64 * 1024
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Layout:
    """How a table maps onto series.

    ``timestamp``, ``target``: the columns (matched without regard to case). ``id``: a column
    naming the series of each row (a long table of several series), or None (the file is one
    series, named after it). ``covariates``: the covariate columns, or None for every other column
    that holds numbers (a column of text is left out, and listed). ``timestamp_format``: a
    ``strptime`` format (``%d/%m/%Y %H:%M`` for day-first dates), or None for ISO 8601.
    Timestamps with a UTC offset (``...Z``, ``+08:00``) are normalised to UTC; naive ones are
    taken as they are. ``delimiter``: the CSV delimiter, or None to sniff it. ``lower_bound``:
    the least value the target can take (forecasts are clipped to it), or None.
    """

    timestamp: str = "timestamp"
    target: str = "pm25"
    id: str | None = None
    covariates: tuple[str, ...] | None = None
    timestamp_format: str | None = None
    delimiter: str | None = None
    lower_bound: float | None = None

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"a delimiter is one character, not {self.delimiter!r}")
        if self.timestamp_format is not None:
            try:  # a directive strptime does not know is said now, not at the first row
                example = datetime(2000, 1, 2, 3, 4, 5).strftime(self.timestamp_format)
                datetime.strptime(example, self.timestamp_format)
            except ValueError as exc:
                raise ValueError(f"timestamp format {self.timestamp_format!r}: {exc}") from None


@dataclass(frozen=True)
class Table:
    """A file's header and rows as text (a missing Parquet value is an empty cell)."""

    header: list[str]
    rows: list[list[str]]
    first_line: int
    """The line number of ``rows[0]`` (for error messages; Parquet: 2, as if the header were line 1)."""


def read_table(path: Path, layout: Layout, data: bytes | None = None) -> Table:
    """The table in ``path`` (its bytes ``data`` if already read). Raises ``ValueError`` naming the file."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_csv(decode(str(path), data), str(path), layout.delimiter)


def decode(where: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc})") from None


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV's text: the one of :data:`DELIMITERS` that splits its first lines
    into the same number of fields (``,`` when none does better)."""
    sample = text[:_SNIFF_BYTES]
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def parse_csv(text: str, where: str, delimiter: str | None = None) -> Table:
    """A CSV's header and rows (blank lines before the header and at the end skipped)."""
    delimiter = delimiter or sniff_delimiter(text)
    lines_of_text = text.splitlines()
    if '"' in text or "\0" in text:
        try:
            table = list(csv.reader(lines_of_text, delimiter=delimiter))
        except csv.Error as exc:
            raise ValueError(f"{where}: not valid CSV ({exc})") from None
    else:  # no quoting: a plain split is what the csv module would do, twice as fast
        table = [line.split(delimiter) if line else [] for line in lines_of_text]
    while table and not table[-1]:
        table.pop()  # trailing blank lines
    skip = 0
    while skip < len(table) and not table[skip]:
        skip += 1  # leading blank lines
    if skip == len(table):
        raise ValueError(f"{where}: the file is empty (expected a header row)")
    header = [name.strip() for name in table[skip]]
    rows = table[skip + 1 :]
    first = skip + 2
    if set(map(len, rows)) - {len(header)}:
        i = next(i for i, row in enumerate(rows) if len(row) != len(header))
        found = f"{len(rows[i])} fields" if rows[i] else "an empty line"
        hint = ""
        if len(header) == 1 and delimiter == ",":
            hint = " (one column: is the delimiter another? give it with --delimiter)"
        raise ValueError(f"{where}: line {first + i}: {found}, the header has {len(header)} fields{hint}")
    return Table(header, rows, first)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read Parquet ({exc})") from None
    header = [str(name) for name in table.column_names]
    columns = [[_cell(v) for v in table.column(name).to_pylist()] for name in table.column_names]
    rows = [list(row) for row in zip(*columns, strict=True)] if columns else []
    return Table(header, rows, 2)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
