"""The contextvars that carry the active step, producer and synced step to every log call."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol


class SyncedLog(Protocol):
    """The step of a ``synced_step_scope``, as ``@logs_metrics`` on a rank without a run sees it."""

    def log(
        self, data: Mapping[str, Any], *, source: str | None = None, priority: int | None = None
    ) -> None: ...


#: The logical step of the innermost ``step_scope`` (None outside any scope).
ACTIVE_STEP: ContextVar[int | None] = ContextVar("stepsync_active_step", default=None)
#: ``(source, priority)`` of the innermost ``@logs_metrics`` call (None outside any).
ACTIVE_PRODUCER: ContextVar[tuple[str, int] | None] = ContextVar(
    "stepsync_active_producer", default=None
)
#: The innermost ``synced_step_scope`` (None outside any).
ACTIVE_SYNCED: ContextVar[SyncedLog | None] = ContextVar("stepsync_synced_step", default=None)
