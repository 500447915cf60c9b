"""The entries waiting for their row, by logical step, handed out lowest step first."""

from __future__ import annotations

import heapq
from collections.abc import Collection

from stepsync._merge import Entry, collides


class Pending:
    """The pending entries of one run: a bucket per step, and later rows of closed steps.

    Not thread-safe: the manager calls it with its lock held.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, list[Entry]] = {}
        self._order: list[int] = []  # the pending steps, as a heap
        #: Later rows of a closed step: a second value for a key its row holds.
        self._later_rows: dict[int, list[list[Entry]]] = {}
        #: The steps with an entry that holds nested dicts.
        self._nested: set[int] = set()
        #: What the idle timer saw of each bucket at its last tick.
        self._marks: dict[int, tuple[list[Entry], int]] = {}
        #: How many entries wait, in every step.
        self.entries = 0

    def __len__(self) -> int:
        """The number of pending steps."""
        return len(self._buckets)

    def lowest(self) -> int | None:
        """The lowest pending step."""
        return self._order[0] if self._order else None

    def highest(self) -> int | None:
        """The highest pending step."""
        return max(self._buckets) if self._buckets else None

    def add(self, step: int, entry: Entry, closed: bool = False, nested: bool = True) -> bool:
        """Add ``entry`` to ``step``; return True when the step was not pending before.

        ``closed``: plain wandb would already have written the step's row, so a value for a
        key that row holds must not replace the first one: it opens a later row of the step.
        ``nested``: the entry holds nested dicts.
        """
        self.entries += 1
        if nested:
            self._nested.add(step)
        bucket = self._buckets.get(step)
        if bucket is None:
            self._buckets[step] = [entry]
            heapq.heappush(self._order, step)
            return True
        if not closed:
            bucket.append(entry)
            return False
        rows = self._later_rows.get(step)
        last = rows[-1] if rows else bucket  # entries keep their order: into the last row
        if not collides(last, entry):
            last.append(entry)
        elif rows:
            rows.append([entry])
        else:
            self._later_rows[step] = [[entry]]
        return False

    def pop_through(self, through: int) -> tuple[int, list[list[Entry]], bool] | None:
        """Remove the lowest step if it is <= ``through``; return it, its rows' entries (usually
        one row) and whether they hold nested dicts. None when no step <= ``through`` waits."""
        order = self._order
        if not order or order[0] > through:
            return None
        step = heapq.heappop(order)
        rows = [self._buckets.pop(step), *self._later_rows.pop(step, ())]
        self.entries -= sum(map(len, rows))
        nested = step in self._nested
        if nested:
            self._nested.discard(step)
        return step, rows, nested

    def take(self, step: int) -> list[Entry]:
        """Remove ``step`` wherever it is; return all its entries in one list, in order."""
        entries = self._buckets.pop(step, None)
        if entries is None:
            return []
        self._order.remove(step)
        heapq.heapify(self._order)
        self._nested.discard(step)
        for row in self._later_rows.pop(step, ()):
            entries += row
        self.entries -= len(entries)
        return entries

    def closed_through(self, frontier: int, open_steps: Collection[int]) -> int | None:
        """The highest step through which every pending step is closed: below ``frontier``
        and in no open scope. None when the lowest pending step is not closed."""
        through = None
        for step in sorted(self._order):
            if step >= frontier or step in open_steps:
                break
            through = step
        return through

    def idle_through(self, frontier: int, open_steps: Collection[int]) -> int | None:
        """Like ``closed_through``, counting only steps unchanged since the last call.

        The idle timer calls it once a tick: a bucket the same at two ticks sat idle for a
        whole interval (the log path itself reads no clock).
        """
        marks, self._marks = self._marks, {}
        through = None
        idle = True
        for step in sorted(self._order):
            bucket = self._buckets[step]
            mark = self._marks[step] = (bucket, len(bucket))
            if idle:
                last = marks.get(step)
                idle = (
                    step < frontier
                    and step not in open_steps
                    and last is not None
                    and last[0] is bucket
                    and last[1] == mark[1]
                )
                if idle:
                    through = step
        return through
