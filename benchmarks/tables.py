"""Table output shared by the scripts in ``benchmarks/``: right-aligned columns, or Markdown for the README."""
from __future__ import annotations


def print_table(header: list[str], rows: list[list], markdown: bool = False) -> None:
    """Print ``rows`` (already formatted cells) under ``header``."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
