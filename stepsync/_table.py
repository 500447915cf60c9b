"""A plain, aligned text table for the command line, so the CLI needs no extra dependency."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render_table"]


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    right: Sequence[int] = (),
    gap: int = 2,
) -> str:
    """Return ``rows`` under ``headers`` as aligned text; columns listed in ``right`` align right.

    Cells are shown with ``str()``; ``None`` shows as ``-``. No trailing spaces, no final newline.
    """
    if gap < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    width = len(headers)
    cells = [[str(h) for h in headers]]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} cells, headers have {width}: {row!r}")
        cells.append(["-" if cell is None else str(cell) for cell in row])
    widths = [max(len(line[col]) for line in cells) for col in range(width)]
    right_set = set(right)
    lines = []
    for line in cells:
        parts = [
            cell.rjust(widths[col]) if col in right_set else cell.ljust(widths[col])
            for col, cell in enumerate(line)
        ]
        lines.append((" " * gap).join(parts).rstrip())
    return "\n".join(lines)
