"""Plain-text tables for the command line and the demo."""
from __future__ import annotations

from typing import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_history(entries) -> str:
    rows = []
    for e in entries:
        if e.from_version or e.to_version:
            what = (f"{e.alias}: " if e.alias else "") + f"{e.from_version or '-'} -> {e.to_version or '-'}"
        else:
            what = e.version or ""
        rows.append((e.time.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.action, what, e.reason))
    return table(["TIME (UTC)", "ACTOR", "ACTION", "WHAT", "REASON"], rows)
