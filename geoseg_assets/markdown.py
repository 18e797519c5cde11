"""Markdown tables for metadata panels and reports (no Dagster: geo/, ml/ and monitoring/ use it too)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A pipe table: the header, its `|---|` rule, then one line per row (cells as `str`, already formatted
    by the caller); no trailing newline after the last row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = "\n".join("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines) + "\n" + body
