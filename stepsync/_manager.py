"""The per-run step manager: decides each value's logical step, merges, commits in order.

A value's path: ``log()`` resolves its logical step (scope, explicit step, current step, or
wandb's auto-increment), appends it to that step's pending bucket, and ``_commit_through``
later writes each step as ONE ``Run.log`` call, in ascending logical order, with native step
``max(logical, last native + 1)`` and the axis key carrying the logical step.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Mapping
from operator import itemgetter
from typing import Any, Literal

from stepsync import _registry, _scope, _wandb
from stepsync._capture import capture
from stepsync._config import check_option
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP
from stepsync._errors import LateStepError
from stepsync._metrics import Declaration, MetricDefinitions
from stepsync._summary import SummaryKeeper
from stepsync._validate import check_data, check_priority, check_step

logger = logging.getLogger("stepsync")

LatePolicy = Literal["axis", "next", "drop", "raise"]

#: One pending log call: its priority and its data as captured at the call.
Entry = tuple[int, dict[str, Any]]

_by_priority = itemgetter(0)
#: wandb's record of its own patches: TensorBoard sync can begin after a run's first call.
_WANDB_PATCHES = _wandb.PATCHES

#: How many keys the "already checked" cache of a manager holds at most: a job that logs new keys
#: every step (``eval/sample_123``) keeps paying the check instead of growing the cache forever.
KNOWN_KEYS_MAX = 65_536


def merge(entries: list[Entry]) -> tuple[dict[str, Any], int]:
    """Merge one step's entries: lowest priority number wins, then the later write.

    Nested dicts are merged key by key, as wandb merges them within a step. Returns the merged
    dict and the number of key collisions.
    """
    if len(entries) == 1:
        return entries[0][1], 0  # already a private copy (captured at the call)
    merged: dict[str, Any] = {}
    written = 0
    for _, data in entries:
        merged |= data  # in place; a little cheaper than merged.update(data)
        written += len(data)
    if written == len(merged):
        return merged, 0  # no key written twice: order does not matter
    merged = {}
    collisions = 0
    # A stable sort, highest number first: updates from more important sources come last and
    # win; within one priority the original (arrival) order is kept, so the later write wins.
    for _, data in sorted(entries, key=_by_priority, reverse=True):
        collisions += _merge_into(merged, data)
    return merged, collisions


def _merge_into(target: dict[str, Any], data: Mapping[str, Any]) -> int:
    """Write ``data`` over ``target`` (nested dicts key by key); return the keys overwritten."""
    collisions = 0
    for key, value in data.items():
        if key in target:
            old = target[key]
            if _wandb.MERGES_NESTED_DICTS and isinstance(old, dict) and isinstance(value, dict):
                nested = dict(old)  # the user's own dict stays untouched
                collisions += _merge_into(nested, value)
                target[key] = nested
                continue
            collisions += 1
        target[key] = value
    return collisions


class StepManager:
    """Routes every value of one wandb run to its logical step and commits one row per step."""

    def __init__(
        self,
        run: Any = None,
        *,
        buffer_size: int = 100,
        flush_interval: float = 2.0,
        late: LatePolicy = "axis",
        axis_key: str = "stepsync/step",
    ) -> None:
        if run is None:
            run = _registry.active_run()
        existing = run.__dict__.get(_registry.ATTR)
        if existing is not None:
            raise ValueError(
                "stepsync: this run already has a manager; use stepsync.get_manager(run)"
            )
        self._buffer_size: int = check_option("buffer_size", buffer_size)
        self._flush_interval: float = check_option("flush_interval", flush_interval)
        self._late: LatePolicy = check_option("late", late)
        self._axis_key: str = check_option("axis_key", axis_key)
        self._run = run
        # wandb.init(mode="disabled") gives a run that keeps nothing: logging to it is a no-op.
        self._noop = _wandb.is_disabled(run)
        self._shared = _wandb.is_shared(run)
        # TensorBoard sync: wandb numbers every row itself and drops nothing as late, so
        # stepsync has nothing to fix and passes each call on as it came.
        self._passthrough = not self._noop and _wandb.wandb_owns_step()
        self._lock = threading.RLock()
        self._reset_state()
        next_step = 0 if self._noop else _wandb.starting_step(run)
        self._committed_through = next_step - 1
        self._last_native = next_step - 1
        #: Keys checked to be strings and already committed once with a flat value: a call whose
        #: keys are all known skips both the check and, at its commit, the look for new keys.
        self._known_keys: set[str] = set()
        #: A pending entry has keys that are not known yet: the next commits look for new keys.
        self._new_keys = True
        self._metrics = MetricDefinitions(self._axis_key)
        self._summary = SummaryKeeper(run, self._metrics)
        #: True when the per-call path must look closer: a disabled run, TensorBoard sync, or
        #: ``finish()`` began (wandb then refuses ``log``) or cannot be watched.
        self._closing = (
            self._noop or self._passthrough or not _wandb.add_finish_hook(run, self._on_run_finish)
        )
        if not self._closing:
            _wandb.before_summary_reads(run, self.commit_closed_steps)
        _registry.register(self, run)

    def _reset_state(self) -> None:
        # pending: logical step -> entries; `_heap` holds the same steps for ordered commits.
        self._pending: dict[int, list[Entry]] = {}
        # What the timer saw of each pending bucket at its last tick; unchanged since = idle.
        self._idle_marks: dict[int, tuple[list[Entry], int]] = {}
        self._heap: list[int] = []
        #: Extra rows of a pending closed step, committed right after it, in order.
        self._extra_rows: dict[int, list[list[Entry]]] = {}
        self._entries = 0
        self._late_next: list[Entry] = []
        self._current: int | None = None
        # Orders update_step against scope entries (_scope.sequence); scopes entered before
        # this manager existed belong to earlier runs.
        self._current_seq = next(_scope.sequence)
        #: The highest step seen (data, ``update_step``, scopes): steps below it are closed.
        self._frontier = -1
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._stats = dict.fromkeys(
            (
                "dropped_logs",
                "step_conflicts",
                "late_logs",
                "key_conflicts",
                "step_jumps",
                "failed_flushes",
                "failed_values",
                "dropped_values",
            ),
            0,
        )
        # Counted at every commit: attributes, a little cheaper than items of _stats.
        self._wandb_calls = 0
        self._calls_saved = 0
        self._refused = 0  # late="raise" calls (total_logs is the sum of where calls went)
        self._dropped_steps: tuple[int, int] | None = None
        self._dropped_reported = 0

    # ----------------------------------------------------------------- public API

    @property
    def run(self) -> Any:
        """The wandb run this manager commits to."""
        return self._run

    @property
    def current_step(self) -> int | None:
        """The step that step-less calls outside scopes go to (``update_step`` / last scope)."""
        return self._current_step()

    def _current_step(self) -> int | None:
        """The later of the last ``update_step`` and the last scope entered."""
        scope = _scope.last_scope
        if scope is not None and scope[0] > self._current_seq:
            return scope[1]
        return self._current

    def wandb_step(self) -> int | None:
        """``run.step`` as plain wandb would report it for the calls made so far.

        That is the step still open, else the one after the last committed (what a step-less
        ``log`` would write to); None when wandb's own answer applies (it owns the step).
        """
        if self._noop or self._passthrough or self._shared:
            return None
        with self._lock:
            return max(self._frontier, self._committed_through + 1)

    def user_defined_metric(self, name: str, **options: Any) -> None:
        """The user called ``define_metric``: keep stepsync's declarations from overriding it."""
        with self._lock:
            redo = self._metrics.user_defined(name, **options)
            self._declare(redo)

    @property
    def axis_key(self) -> str:
        """The history key that carries the logical step in every committed row."""
        return self._axis_key

    def log(
        self,
        data: Mapping[str, Any],
        step: int | None = None,
        *,
        commit: bool | None = None,
        source: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Log ``data`` to its logical step; it is committed with everything else of that step.

        ``source``/``priority`` default to the innermost ``@logs_metrics`` call, else
        ``"default"``/5. Priority 0 wins key collisions, then 1, 5, 10 ...
        """
        if source is None or priority is None:
            producer = ACTIVE_PRODUCER.get()
            if producer is not None:
                source = producer[0] if source is None else source
                priority = producer[1] if priority is None else priority
        self._log(
            data,
            step,
            commit,
            (
                "default" if source is None else source,
                5 if priority is None else check_priority(priority),
            ),
        )

    def update_step(self, step: int, source: str | None = None) -> None:
        """Make ``step`` the current step; steps below it are closed and commit once idle."""
        step = check_step(step)
        with self._lock:
            self._current = step
            self._current_seq = next(_scope.sequence)
            self._frontier = max(self._frontier, step)
            self._ensure_flusher()
        if source is not None and logger.isEnabledFor(logging.DEBUG):
            logger.debug("stepsync: step %d set by %s", step, source)

    def flush(self) -> None:
        """Commit every pending step now, open ones included."""
        with self._lock:
            if self._pending:
                self._commit_through(max(self._pending))
            if self._late_next:
                # late="next" data with no later step to ride on: an extra row at the last step.
                entries, self._late_next = self._late_next, []
                self._commit_step(self._committed_through, entries)
            self._summary.restore()

    def finalize(self) -> None:
        """Flush, stop the background flusher and report dropped data; call before finish."""
        self.flush()
        with self._lock:
            self._wake.set()
            self._flusher = None
            dropped = self._stats["dropped_logs"]
            steps = self._dropped_steps
            report = dropped > self._dropped_reported
            self._dropped_reported = dropped
        if report and steps is not None:
            logger.warning(
                "stepsync: late='drop' dropped %d late log calls (%d values) for steps %d..%d",
                dropped,
                self._stats["dropped_values"],
                steps[0],
                steps[1],
            )

    def _on_run_finish(self) -> None:
        """``run.finish()`` began: commit everything, then leave the scope notifications."""
        self._closing = True
        self.finalize()
        self._summary.at_finish()
        _registry.unregister(self)

    def get_stats(self) -> dict[str, int]:
        """Counters since the manager was created (see README, "Statistics")."""
        with self._lock:
            pending = self._entries + len(self._late_next)
            stats = {"total_logs": self._total_logs(pending), **self._stats}
            stats["wandb_calls"] = stats["successful_flushes"] = self._wandb_calls  # seed's name
            stats["calls_saved"] = self._calls_saved
            stats["pending_steps"] = len(self._pending) + (1 if self._late_next else 0)
            stats["pending_entries"] = pending
        return stats

    def _total_logs(self, pending: int) -> int:
        """Every call went somewhere: pending, into a row (or a failed one), dropped or refused.

        Counting them where they went keeps the per-call path free of a counter.
        """
        stats = self._stats
        committed = self._calls_saved + self._wandb_calls + stats["failed_flushes"]
        return pending + committed + stats["dropped_logs"] + self._refused

    # -------------------------------------------------------------- the log path

    def _log(  # noqa: PLR0912  (the per-call path, kept flat on purpose: no helper calls)
        self,
        data: Mapping[str, Any],
        step: int | None,
        commit: bool | None,
        producer: tuple[str, int],
    ) -> None:
        """Resolve the logical step of one call and buffer it (``producer``: source, priority)."""
        new_keys = type(data) is not dict or not self._known_keys.issuperset(data)
        if new_keys:
            data = check_data(data)
        if step is not None:
            step = check_step(step)
        if (self._closing or _WANDB_PATCHES.get("tensorboard")) and self._not_buffered(
            data, step, commit
        ):
            return
        entry: Entry = (producer[1], capture(data))
        scope_step = ACTIVE_STEP.get()
        lock = self._lock
        lock.acquire()  # not `with`: ~0.1 us less a call
        try:
            if new_keys:
                self._new_keys = True
            close = False
            if scope_step is not None:
                target = scope_step
                if step is not None and step != scope_step:
                    self._step_conflict(step, scope_step, producer[0])
            elif step is not None:
                target = step
                close = bool(commit)  # an explicit step with commit=True closes it, as in wandb
            elif (current := self._current_step()) is not None:
                target = current
            else:
                # wandb's own auto-increment: the highest open step, else the next one; a
                # commit (None/True) closes it, as plain wandb would.
                target = max(self._frontier, self._committed_through + 1)
                close = commit is None or commit
            if target <= self._committed_through and not self._accept_late(
                target, entry, producer[0]
            ):
                return
            # Into the bucket of `target` (inline: this runs once per log call).
            bucket = self._pending.get(target)
            if bucket is None:
                self._pending[target] = [entry]
                heapq.heappush(self._heap, target)
                if target > self._frontier:
                    self._frontier = target
                if self._flusher is None and not close:  # a step left pending: start the timer
                    self._ensure_flusher()
            elif (
                scope_step is None
                and target < self._frontier
                and target not in _scope.open_scopes.values()
            ):
                self._add_to_closed_step(target, bucket, entry)
            else:
                bucket.append(entry)
            self._entries += 1
            if close:
                self._commit_through(target)
            elif self._entries > self._buffer_size:
                self._commit_overflow()
        finally:
            lock.release()

    def _add_to_closed_step(self, step: int, bucket: list[Entry], entry: Entry) -> None:
        """A value for a closed step (wandb would have written its row) merges into it, but a
        second value for a key the row holds must not replace the first: it opens an extra row
        of the step. Entries keep their order: each goes into the last row of the step."""
        extra_rows = self._extra_rows.get(step)
        last = extra_rows[-1] if extra_rows else bucket
        if not _collides(last, entry):
            last.append(entry)
        elif extra_rows:
            extra_rows.append([entry])
        else:
            self._extra_rows[step] = [[entry]]

    def _not_buffered(self, data: Mapping[str, Any], step: int | None, commit: bool | None) -> bool:
        """A disabled run, a finished one (raises, as wandb), or one whose step wandb owns."""
        if self._noop:
            return True
        if _wandb.is_finished(self._run):  # wandb refuses log() after finish()
            raise _run_finished_error(self._run)
        if self._passthrough or _wandb.wandb_owns_step():
            if not self._passthrough:
                self._start_passthrough()
            _wandb.call_native(_wandb.ORIGINALS["log"], self._run, data, step, commit)
            return True
        return False

    def _start_passthrough(self) -> None:
        """TensorBoard sync began mid-run: hand wandb what is pending, as plain calls would have.

        The closed steps become rows; the highest step's data joins wandb's open row
        (``commit=False``), as it would have natively, instead of becoming a row of its own.
        """
        with self._lock:
            self._passthrough = self._closing = True
            self._wake.set()
            self._flusher = None
            if not self._pending:
                return
            highest = max(self._pending)
            self._commit_through(highest - 1)
            entries = self._pending.pop(highest)
            for extra in self._extra_rows.pop(highest, []):
                entries += extra
            self._heap.remove(highest)
            self._entries -= len(entries)
            row, _ = merge(entries)
        _wandb.call_native(_wandb.ORIGINALS["log"], self._run, row, None, False)

    def _step_conflict(self, step: int, scope_step: int, source: str) -> None:
        self._stats["step_conflicts"] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "stepsync: %s logged step=%d inside step_scope(%d); the scope wins",
                source,
                step,
                scope_step,
            )

    def _accept_late(self, step: int, entry: Entry, source: str) -> bool:
        """Apply the late policy; True when the entry should still go into a bucket of ``step``."""
        stats = self._stats
        stats["late_logs"] += 1
        policy = self._late
        if policy == "axis":
            return True
        if policy == "next":
            stats["step_conflicts"] += 1
            self._late_next.append(entry)
            return False
        if policy == "drop":
            stats["dropped_logs"] += 1
            stats["dropped_values"] += len(entry[1])
            low, high = self._dropped_steps or (step, step)
            self._dropped_steps = (min(low, step), max(high, step))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("stepsync: dropped late data from %s for step %d", source, step)
        else:
            self._refused += 1
            raise LateStepError(step, self._committed_through)
        return False

    # ----------------------------------------------------------- scope and timer

    def _scope_exited(self, through: int) -> None:
        """A scope closed with steps <= ``through`` pending (the scope peeked)."""
        lock = self._lock
        lock.acquire()  # not `with`: ~0.08 us less a step
        try:
            self._commit_through(through)  # nothing when another thread committed meanwhile
        finally:
            lock.release()

    def _ensure_flusher(self) -> None:
        """Start the background thread that commits closed steps once they sit idle."""
        if self._flusher is not None or self._flush_interval <= 0:
            return
        self._wake = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_idle_loop,
            args=(self._wake,),
            name="stepsync-flusher",
            daemon=True,
        )
        self._flusher.start()

    def _flush_idle_loop(self, wake: threading.Event) -> None:
        while not wake.wait(self._flush_interval):
            try:
                self._commit_idle()
            except Exception:  # never let bookkeeping kill the thread silently
                logger.exception("stepsync: background flush failed")

    def _commit_idle(self) -> None:
        """Commit the closed steps, lowest first, that got no new data since the last tick.

        Each tick notes every bucket's size; a bucket still the same at the next tick has sat
        idle for at least one ``flush_interval`` (the log path itself reads no clock).
        """
        with self._lock:
            marks, self._idle_marks = self._idle_marks, {}
            open_steps = set(_scope.open_scopes.values())
            through = None
            idle = True
            for step in sorted(self._heap):
                bucket = self._pending[step]
                mark = self._idle_marks[step] = (bucket, len(bucket))
                if idle:
                    last = marks.get(step)
                    idle = (
                        step < self._frontier
                        and step not in open_steps
                        and last is not None
                        and last[0] is bucket
                        and last[1] == mark[1]
                    )
                    if idle:
                        through = step
            if through is not None:
                self._commit_through(through)
            self._summary.restore()  # what late rows overwrote, at most once a tick

    def commit_closed_steps(self) -> None:
        """Commit the steps plain wandb would already have written (below the open step, no
        scope open): user code is about to read ``run.summary`` or define a metric, and what it
        sees or changes must be what it would see natively."""
        try:
            with self._lock:
                open_steps = set(_scope.open_scopes.values())
                through = None
                for step in sorted(self._heap):
                    if step >= self._frontier or step in open_steps:
                        break
                    through = step
                if through is not None:
                    self._commit_through(through)
                self._summary.restore()
        except Exception:
            logger.exception("stepsync: could not commit the closed steps")

    def _commit_overflow(self) -> None:
        """Too many entries are pending: commit the lowest closed steps until under the limit."""
        heap = self._heap
        while heap and self._entries > self._buffer_size and heap[0] < self._frontier:
            self._commit_through(heap[0])

    # ------------------------------------------------------------------- commits

    def _commit_through(self, through: int) -> None:
        """Commit, in ascending logical order, every pending step <= ``through``.

        Called with the lock held; the lock also keeps native steps in order.
        """
        heap = self._heap
        while heap and heap[0] <= through:
            step = heapq.heappop(heap)
            entries = self._pending.pop(step)
            self._entries -= len(entries)
            if self._late_next:
                entries = self._late_next + entries
                self._late_next = []
            self._commit_step(step, entries)
            for extra in self._extra_rows.pop(step, ()):
                self._entries -= len(extra)
                self._commit_step(step, extra)

    def _commit_step(self, step: int, entries: list[Entry]) -> None:
        """Write one merged row for logical ``step`` through wandb's own ``log``."""
        merged, collisions = merge(entries)
        stats = self._stats
        if collisions:
            stats["key_conflicts"] += collisions
        self._calls_saved += len(entries) - 1
        merged[self._axis_key] = step
        late = step <= self._committed_through
        if not late:
            self._committed_through = step
        # the row's native step: at least max(step, last native + 1); wandb may raise it further
        native = self._last_native + 1
        if step > native:
            native = step
        new_keys = self._new_keys
        if new_keys and not self._pending and not self._late_next:
            self._new_keys = False  # every entry left has known keys
        try:
            native = self._write_row(step, merged, native)
        except Exception:
            stats["failed_flushes"] += 1
            logger.exception(
                "stepsync: wandb refused the row of step %d (native step %d, keys %s)",
                step,
                native,
                sorted(merged),
            )
            return
        self._last_native = native
        self._wandb_calls += 1
        if new_keys:
            self._declare(self._metrics.committed(merged))
            self._remember_keys(merged)
        if native != step:
            stats["step_jumps"] += 1
            if not self._metrics.switched:
                self._declare(self._metrics.switch())
        self._summary.after_row(step, merged, late)
        if late:
            self._ensure_flusher()  # its tick writes back the summaries late rows overwrote

    def _write_row(self, step: int, row: dict[str, Any], native: int) -> int:
        """Commit ``row``; a value wandb refuses costs only its own key (reported at ERROR)."""
        try:
            return _wandb.native_log(self._run, row, native, self._shared)
        except Exception:
            bad = _wandb.unserializable_keys(self._run, row, native)
            if not bad or len(bad) >= len(row) - 1:  # nothing but the axis key would be left
                raise
        logger.error(
            "stepsync: wandb cannot serialize %s at step %d; the rest of the row is kept",
            ", ".join(repr(key) for key in bad),
            step,
        )
        self._stats["failed_values"] += len(bad)
        kept = {key: value for key, value in row.items() if key not in bad}
        return _wandb.native_log(self._run, kept, native, self._shared)

    def _remember_keys(self, row: Mapping[str, Any]) -> None:
        """Flat keys become known; a nested value may bring new leaves, so its key never does."""
        known = self._known_keys
        for key, value in row.items():
            if type(value) is not dict and len(known) < KNOWN_KEYS_MAX:
                known.add(key)

    def _declare(self, declarations: list[Declaration]) -> None:
        for name, options in declarations:
            try:
                _wandb.native_define_metric(self._run, name, **options)
            except Exception:
                logger.exception("stepsync: could not declare %r on the logical-step axis", name)

    def _take_step(self, step: int) -> dict[str, Any]:
        """Remove and merge the pending values of ``step`` (``stepsync.distributed`` reduces them
        across ranks and logs the result back)."""
        with self._lock:
            entries = self._pending.pop(step, None)
            if entries is None:
                return {}
            self._heap.remove(step)
            heapq.heapify(self._heap)
            for extra in self._extra_rows.pop(step, []):
                entries += extra
            self._entries -= len(entries)
            merged, collisions = merge(entries)
            self._stats["key_conflicts"] += collisions
            self._calls_saved += len(entries)  # the reduced row is then the one call
            return merged

    def _reset_after_fork(self) -> None:
        """In a fork child: a fresh lock and no pending data (the parent owns it)."""
        self._lock = threading.RLock()
        committed, last_native = self._committed_through, self._last_native
        self._reset_state()
        self._committed_through, self._last_native = committed, last_native


def _collides(bucket: list[Entry], entry: Entry) -> bool:
    """True when ``entry`` writes a key that an entry of ``bucket`` already holds."""
    data = entry[1]
    return any(not held.keys().isdisjoint(data) for _, held in bucket)


def _run_finished_error(run: Any) -> Exception:
    from wandb.errors import UsageError

    return UsageError(
        f"Run ({getattr(run, 'id', '?')}) is finished: stepsync cannot log to it. "
        "Log before run.finish(), or start a new run."
    )
