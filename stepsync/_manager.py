"""The per-run step manager: each value goes to its logical step; each step becomes one row.

A value's path (docs/design.md, "A value's path"): ``log()``/``route()`` checks the call,
captures the data and resolves its logical step (scope, explicit step, current step, or wandb's
auto-increment); ``Pending`` holds it with the rest of that step; when the step is complete
(its scope closed, a later step began and the step sat idle, the buffer overflowed, or
``flush()``) the steps are written lowest first, one ``RowWriter.write`` each.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from stepsync import _live, _wandb
from stepsync._capture import capture
from stepsync._config import (
    DEFAULT_PRIORITY,
    DEFAULT_SOURCE,
    DEFAULTS,
    LatePolicy,
    Options,
    manager_defaults,
)
from stepsync._context import ACTIVE_PRODUCER, ACTIVE_STEP
from stepsync._flusher import IdleFlusher
from stepsync._ledger import Ledger
from stepsync._merge import Entry
from stepsync._stats import Stats
from stepsync._validate import check_data, check_priority, check_step

logger = logging.getLogger("stepsync")


class StepManager:
    """Routes every value of one wandb run to its logical step and commits one row per step."""

    def __init__(
        self,
        run: Any = None,
        *,
        buffer_size: int = DEFAULTS.buffer_size,
        flush_interval: float = DEFAULTS.flush_interval,
        late: LatePolicy = DEFAULTS.late,
        axis_key: str = DEFAULTS.axis_key,
    ) -> None:
        if run is None:
            run = _wandb.active_run()
        if _live.manager_of(run) is not None:
            raise ValueError(
                "stepsync: this run already has a manager; use stepsync.get_manager(run)"
            )
        self._options = Options.checked(
            buffer_size=buffer_size, flush_interval=flush_interval, late=late, axis_key=axis_key
        )
        self._run = run
        self._noop = _wandb.is_disabled(run)  # mode="disabled": a run that keeps nothing
        self._shared = _wandb.is_shared(run)
        # TensorBoard sync: wandb numbers every row itself and drops nothing as late, so
        # stepsync has nothing to fix and passes each call on as it came.
        self._passthrough = not self._noop and _wandb.wandb_owns_step()
        self._lock = threading.RLock()
        self._stats = Stats()
        self._flusher = IdleFlusher(self._options.flush_interval, self.commit_idle_steps)
        next_step = 0 if self._noop else _wandb.starting_step(run)
        self._ledger = Ledger(
            run, self._options, self._stats, self._flusher, self._shared, next_step
        )
        #: The step of the last ``update_step`` or scope entered (None: wandb's auto-increment).
        self._current: int | None = None
        #: The highest step seen (data, ``update_step``, scopes): the steps below it are closed.
        self._frontier = -1
        #: True when a call must look closer: a disabled run, TensorBoard sync, or ``finish()``
        #: began (wandb then refuses ``log``) or cannot be watched.
        self._closing = (
            self._noop or self._passthrough or not _wandb.add_finish_hook(run, self._on_finish)
        )
        if not self._closing:
            _wandb.before_summary_reads(run, self.commit_closed_steps)
        _live.join(run, self)

    # ----------------------------------------------------------------- public API

    @property
    def run(self) -> Any:
        """The wandb run this manager commits to."""
        return self._run

    @property
    def axis_key(self) -> str:
        """The history key that carries the logical step in every committed row."""
        return self._options.axis_key

    @property
    def current_step(self) -> int | None:
        """The step that step-less calls outside scopes go to (``update_step`` / last scope)."""
        return self._current

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
        producer = ACTIVE_PRODUCER.get() or (DEFAULT_SOURCE, DEFAULT_PRIORITY)
        if source is None:
            source = producer[0]
        priority = producer[1] if priority is None else check_priority(priority)
        self.route(data, step, commit, (source, priority))

    def update_step(self, step: int, source: str | None = None) -> None:
        """Make ``step`` the current step; steps below it are closed and commit once idle."""
        step = check_step(step)
        with self._lock:
            self._current = step
            self._frontier = max(self._frontier, step)
            self._flusher.start()
        if source is not None:
            logger.debug("stepsync: step %d set by %s", step, source)

    def flush(self) -> None:
        """Commit every pending step now, open ones included."""
        with self._lock:
            self._ledger.flush()

    def finalize(self) -> None:
        """Flush, stop the background flusher and report dropped data; call before finish."""
        self.flush()
        with self._lock:
            self._flusher.stop()
            self._ledger.report_drops()

    def get_stats(self) -> dict[str, int]:
        """Counters since the manager was created (see README, "Statistics")."""
        with self._lock:
            return self._stats.snapshot(*self._ledger.counts())

    # ------------------------------------ the protocol of the patch, scopes and timer

    def route(
        self,
        data: Mapping[str, Any],
        step: int | None,
        commit: bool | None,
        producer: tuple[str, int],
    ) -> None:
        """One log call, with its arguments as ``Run.log`` takes them and its ``(source,
        priority)``: check it, capture it and add it to its logical step (the patch's entry)."""
        data = check_data(data)
        if step is not None:
            step = check_step(step)
        if (self._closing or _wandb.wandb_owns_step()) and self._bypass(data, step, commit):
            return
        captured, nested = capture(data)
        entry: Entry = (producer[1], captured)
        scope_step = ACTIVE_STEP.get()
        with self._lock:
            if scope_step is None:
                target, close = self._resolve(step, commit)
            else:  # inside a scope the scope's step wins
                if step is not None and step != scope_step:
                    self._stats.step_conflicts += 1
                    logger.debug("stepsync: step=%d logged in scope %d", step, scope_step)
                target, close = scope_step, False
            if target > self._frontier:
                self._frontier = target
            # below the open step, outside any scope: wandb would have written its row
            closed = scope_step is None and target < self._frontier and not _live.is_open(target)
            self._ledger.add(target, entry, producer[0], closed, close, self._frontier, nested)

    def scope_entered(self, step: int) -> None:
        """A scope of ``step`` opened (any thread): it is the current step; those below close.
        No lock, so a scope never waits for another thread's commit: a race can only leave the
        frontier lower, and a closed step then waits a little longer for its commit."""
        self._current = step
        if step > self._frontier:
            self._frontier = step

    def scope_exited(self, through: int) -> None:
        """A scope closed: the pending steps up to ``through`` are complete and commit now."""
        with self._lock:
            self._ledger.commit_through(through)

    def commit_idle_steps(self) -> None:
        """The idle timer's tick: commit the closed steps (lowest first) that got no data since
        the last tick, and write back what late rows overwrote in the summary."""
        with self._lock:
            self._ledger.commit_idle(self._frontier, _live.open_steps())

    def commit_closed_steps(self) -> None:
        """Commit the steps plain wandb would already have written (below the open step, in no
        open scope): user code is about to read ``run.summary`` or define a metric."""
        try:
            with self._lock:
                self._ledger.commit_closed(self._frontier, _live.open_steps())
        except Exception:
            logger.exception("stepsync: could not commit the closed steps")

    def wandb_step(self) -> int | None:
        """``run.step`` as plain wandb would report it for the calls made so far: the step
        still open, else the one after the last committed; None when wandb's answer applies."""
        if self._noop or self._passthrough or self._shared:
            return None
        with self._lock:
            return max(self._frontier, self._ledger.committed_through + 1)

    def user_defined_metric(self, name: str, **options: Any) -> None:
        """The user called ``define_metric``: keep stepsync's declarations from overriding it."""
        with self._lock:
            self._ledger.user_defined_metric(name, options)

    def take_step(self, step: int) -> dict[str, Any]:
        """Remove the pending values of ``step``, merged (``stepsync.distributed`` combines them
        across ranks and logs the result back)."""
        with self._lock:
            return self._ledger.take(step)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock, no pending data and no timer (the parent owns them)."""
        self._lock = threading.RLock()
        self._ledger.after_fork()
        self._stats.reset()
        self._flusher.after_fork()
        self._current = None
        self._frontier = -1

    # ------------------------------------------------------------------ internals

    def _resolve(self, step: int | None, commit: bool | None) -> tuple[int, bool]:
        """The logical step of a call outside any scope, and whether the call closes it (commits
        it now)."""
        if step is not None:
            return step, bool(commit)  # an explicit step with commit=True closes it, as in wandb
        if self._current is not None:
            return self._current, False
        # wandb's own auto-increment: the highest open step, else the next one; a commit
        # (None or True) closes it, as plain wandb would.
        auto_step = max(self._frontier, self._ledger.committed_through + 1)
        return auto_step, commit is None or bool(commit)

    def _bypass(self, data: Mapping[str, Any], step: int | None, commit: bool | None) -> bool:
        """True when the call is not buffered: a disabled run, a finished one (which raises, as
        wandb does), or TensorBoard sync (wandb numbers the rows: the call goes as it came)."""
        if self._noop:
            return True
        if _wandb.is_finished(self._run):
            raise _wandb.finished_error(self._run)
        if self._passthrough or _wandb.wandb_owns_step():
            if not self._passthrough:
                self._start_passthrough()
            _wandb.log_natively(self._run, data, step, commit)
            return True
        return False

    def _start_passthrough(self) -> None:
        """TensorBoard sync began mid-run: hand wandb what is pending, as plain calls would have.

        The closed steps become rows; the highest step's data joins wandb's open row
        (``commit=False``), as it would have natively, instead of becoming a row of its own.
        """
        with self._lock:
            self._passthrough = self._closing = True
            self._flusher.stop()
            row = self._ledger.hand_over()
        if row:
            _wandb.log_natively(self._run, row, None, False)

    def _on_finish(self) -> None:
        """``run.finish()`` began: commit everything, then leave the scopes' notifications."""
        self._closing = True
        self.finalize()
        with self._lock:
            self._ledger.at_finish()
        _live.leave(self)


def get_manager(run: Any = None) -> StepManager:
    """The manager of ``run`` (default: ``wandb.run``), created on first use."""
    if run is None:
        run = _wandb.active_run()
    return _live.attach_once(run, lambda: StepManager(run, **manager_defaults()))
