"""Bounded input: refuse a row whose text field is over a size limit, at load, with file and line.

A 20 MB prompt line takes about a minute and 8 GB to tokenise before any context check can see it, so
sizes are checked on characters first, where it is cheap: JSON Lines, CSV and Parquet data files
(:func:`check_file_sizes`), single rows (:func:`check_row_sizes`) and prompt lists
(:func:`check_prompt_chars`). Standard library only (pyarrow for Parquet, imported when used).
"""

from __future__ import annotations

MAX_FIELD_CHARS = 1_000_000
"""Most characters one text field of a row (a prompt, a completion, a message) may hold. A 20 MB
prompt line takes about a minute and 8 GB to tokenise before any context check can see it, so
sizes are checked on characters first, where it is cheap."""


def _text_chars(value) -> int:
    """Characters of a field: a string's length, the longest message content of a conversation."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return max((_text_chars(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((_text_chars(v) for v in value.values()), default=0)
    return 0


def check_row_sizes(row: dict, where: str, max_chars: int = MAX_FIELD_CHARS) -> None:
    """Raise ``ValueError`` when a field of ``row`` holds over ``max_chars`` characters.

    ``where`` starts the one-line message (``"data.jsonl:12"``, ``"row 3"``).
    """
    for field, value in row.items():
        n = _text_chars(value)
        if n > max_chars:
            _refuse(where, field, n, max_chars)


def _refuse(where: str, field, n: int, max_chars: int) -> None:
    """The one-line refusal of a row whose ``field`` holds ``n > max_chars`` characters."""
    raise ValueError(f"{where}: field {field!r} has {n} characters, over the limit of {max_chars}; "
                     f"shorten or drop the row (the limit is max_chars)")


def check_jsonl_sizes(path, max_chars: int = MAX_FIELD_CHARS) -> None:
    """Refuse a JSONL file with a row over ``max_chars`` characters in one field, naming file and line.

    Streams the file: a line no longer than ``max_chars`` cannot hold a longer field, so only the
    long lines are parsed. Lines that are not JSON objects are left to the loader to report.
    """
    import json

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(line) <= max_chars:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                check_row_sizes(row, f"{path}:{number}", max_chars)


def check_csv_sizes(path, max_chars: int = MAX_FIELD_CHARS) -> None:
    """Refuse a CSV file (header row first, as ``datasets`` reads it) with a field over
    ``max_chars`` characters, naming file, line and row (``data.csv:7 (row 6)``: the row starts on
    line 7; rows count from 1 after the header, blank lines are no rows).

    A file of at most ``max_chars`` bytes cannot hold a longer field and is not read. Otherwise the
    file is parsed by the ``csv`` module (quoted fields may span lines), with its field size limit
    raised while it runs (it is process-wide; restored after). A file the ``csv`` module cannot
    parse is left to the loader to report.
    """
    import csv
    import os
    import sys

    if os.path.getsize(path) <= max_chars:
        return
    old_limit = csv.field_size_limit()
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # a C long of 32 bits
        csv.field_size_limit(2**31 - 1)
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            start, number = reader.line_num + 1, 0
            for record in reader:
                number += bool(record)  # blank lines are no rows (pandas skips them too)
                for i, value in enumerate(record):
                    if len(value) > max_chars:
                        field = header[i] if i < len(header) else f"column {i + 1}"
                        _refuse(f"{path}:{start} (row {number})", field, len(value), max_chars)
                start = reader.line_num + 1
    except csv.Error:
        return
    finally:
        csv.field_size_limit(old_limit)


def _arrow_is(dtype, *kinds: str) -> bool:
    """Whether ``dtype`` is one of ``kinds`` (``pyarrow.types.is_<kind>``; kinds that this pyarrow
    lacks, e.g. ``string_view`` before pyarrow 16, are never matched)."""
    import pyarrow as pa

    return any(getattr(pa.types, f"is_{kind}", lambda _: False)(dtype) for kind in kinds)


_ARROW_STRINGS = ("string", "large_string", "string_view")
_ARROW_LISTS = ("list", "large_list", "fixed_size_list", "list_view", "large_list_view")


def _holds_text(dtype) -> bool:
    """Whether an Arrow type holds strings at any depth (lists, structs, maps, dictionaries)."""
    if _arrow_is(dtype, *_ARROW_STRINGS):
        return True
    if _arrow_is(dtype, "dictionary"):
        return _holds_text(dtype.value_type)
    if _arrow_is(dtype, "map"):
        return _holds_text(dtype.key_type) or _holds_text(dtype.item_type)
    if _arrow_is(dtype, *_ARROW_LISTS):
        return _holds_text(dtype.value_type)
    if _arrow_is(dtype, "struct"):
        return any(_holds_text(dtype.field(i).type) for i in range(dtype.num_fields))
    return False


def _column_chars(column) -> list[int]:
    """Characters of each row of an Arrow column ``[n]``, as :func:`_text_chars` counts them: string
    lengths in one vectorised pass, nested values (conversations) row by row."""
    import pyarrow.compute as pc

    if _arrow_is(column.type, "dictionary"):
        column = column.dictionary_decode()
    if _arrow_is(column.type, *_ARROW_STRINGS):
        return pc.utf8_length(column).fill_null(0).to_pylist()
    return [_text_chars(v) for v in column.to_pylist()]


def check_parquet_sizes(path, max_chars: int = MAX_FIELD_CHARS, batch_size: int = 4096) -> None:
    """Refuse a Parquet file with a field over ``max_chars`` characters, naming file and row
    (``data.parquet: row 3``, rows counted from 1).

    Only the columns that hold text are read, ``batch_size`` rows at a time. A file pyarrow cannot
    read is left to the loader to report.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = [f.name for f in parquet.schema_arrow if _holds_text(f.type)]
        if not columns:
            return
        first = 1
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            chars = {name: _column_chars(batch.column(name)) for name in columns}  # [n] each
            if max(max(c, default=0) for c in chars.values()) <= max_chars:
                first += batch.num_rows
                continue
            for i in range(batch.num_rows):
                for name in columns:
                    if chars[name][i] > max_chars:
                        _refuse(f"{path}: row {first + i}", name, chars[name][i], max_chars)
            first += batch.num_rows
    except pa.ArrowException:
        return


def check_file_sizes(path, max_chars: int = MAX_FIELD_CHARS) -> None:
    """Refuse a data file with a field over ``max_chars`` characters, by its suffix: ``.jsonl`` and
    ``.json`` (JSON Lines; a single JSON document is not checked) by :func:`check_jsonl_sizes`,
    ``.csv`` by :func:`check_csv_sizes`, ``.parquet`` by :func:`check_parquet_sizes`. Other
    suffixes are not checked. The ``ValueError`` names the file and the line or row."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        check_jsonl_sizes(path, max_chars)
    elif suffix == ".csv":
        check_csv_sizes(path, max_chars)
    elif suffix == ".parquet":
        check_parquet_sizes(path, max_chars)


def check_prompt_chars(prompts: list, max_chars: int) -> None:
    """Refuse a prompt over ``max_chars`` characters before the tokenizer spends minutes on it."""
    for i, prompt in enumerate(prompts):
        n = _text_chars(prompt)
        if n > max_chars:
            raise ValueError(f"prompt {i} has {n} characters, over the limit of {max_chars}; shorten it "
                             f"(no model context holds it)")
