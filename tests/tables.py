"""Markdown tables read back by an independent parser (markdown-it-py's GFM table rule), for the guards
that every table answer parses."""

from __future__ import annotations


def markdown_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(header cells, rows of cells) when `text` is exactly one GFM table, else None."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    if not tokens or tokens[0].type != "table_open" or tokens[-1].type != "table_close":
        return None
    head: list[str] = []
    rows: list[list[str]] = []
    section = None
    for t in tokens:
        if t.type in ("thead_open", "tbody_open"):
            section = t.type
        elif t.type == "tr_open" and section == "tbody_open":
            rows.append([])
        elif t.type == "inline":
            (head if section == "thead_open" else rows[-1]).append(t.content)
    return head, rows
