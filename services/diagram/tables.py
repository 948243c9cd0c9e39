"""Markdown tables a diagram answer is held to: the grammar decoding follows, and what a cut-off answer becomes.

The grammar (EBNF as xgrammar and vLLM's structured outputs take it) allows exactly: the header row with
the requested columns, the separator row, then one or more rows of as many non-empty cells (no `|`, no
newline), and nothing else. With it the model can only write a table; the token budget can still end it
mid-row, so `complete_table` keeps the header and separator and the complete rows: the answer always
parses, and the cut is reported (finish_reason `length`). No model, no xgrammar here.
"""

from __future__ import annotations

from services.runtime.core.errors import InvalidRequest
from services.runtime.serving.generation import Constraint

MAX_COLUMNS = 12
MAX_COLUMN_CHARS = 64
MAX_ROWS = 500
MAX_CELL_CHARS = 300


def check_columns(columns: list[str]) -> list[str]:
    """The columns as the table's header takes them (stripped); ValueError for what cannot be a header."""
    cols = [c.strip() for c in columns]
    if not 1 <= len(cols) <= MAX_COLUMNS:
        raise ValueError(f"a table has 1 to {MAX_COLUMNS} columns, not {len(cols)}")
    for c in cols:
        if not c or len(c) > MAX_COLUMN_CHARS or any(ch in c for ch in "|\n\r\\\""):
            raise ValueError(f"column {c!r}: 1 to {MAX_COLUMN_CHARS} characters, no | \\ \" or line break")
    return cols


def table_columns(asked: list[str] | None, default: list[str] | None, param: str) -> list[str]:
    """The columns a table answer has: the request's, else the configured ones; a 400 naming `param`."""
    try:
        return check_columns(asked or list(default or []))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param, code="invalid_value") from None


def header(columns: list[str]) -> str:
    """The header and separator rows, each ending in a newline."""
    return "| " + " | ".join(columns) + " |\n" + "|" + "|".join(["---"] * len(columns)) + "|\n"


def table_grammar(columns: list[str]) -> str:
    """EBNF of a table with these columns (xgrammar's dialect, which vLLM's structured outputs accept)."""
    cols = check_columns(columns)
    head = header(cols).replace("\n", "\\n")
    row = ' "|" '.join(["cell"] * len(cols))
    return (f'root ::= "{head}" row{{1,{MAX_ROWS}}}\n'
            f'row ::= "|" {row} "|\\n"\n'
            f'cell ::= [^|\\n\\r]{{1,{MAX_CELL_CHARS}}}\n')


def table_constraint(columns: list[str]) -> Constraint:
    return Constraint(kind="ebnf", spec=table_grammar(columns))


def complete_table(text: str, columns: list[str]) -> str:
    """A constrained answer as a table that parses: the header and separator, then the rows that were
    written to their end (a row cut by the token budget is dropped). The grammar makes the answer start
    with the header; if the budget ended inside it, the header is written whole here."""
    head = header(columns)
    body = text[len(head):] if text.startswith(head) else ""
    cells = len(columns) + 1
    rows = [line for line in body.split("\n")[:-1] if line.startswith("|") and line.endswith("|")
            and line.count("|") == cells]  # only lines closed by their newline
    return head + "".join(f"{row}\n" for row in rows)
