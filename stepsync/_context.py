"""The contextvars that carry the active step and producer to every log call."""

from __future__ import annotations

from contextvars import ContextVar

#: The logical step of the innermost ``step_scope`` (None outside any scope).
ACTIVE_STEP: ContextVar[int | None] = ContextVar("stepsync_active_step", default=None)
#: ``(source, priority)`` of the innermost ``@logs_metrics`` call (None outside any).
ACTIVE_PRODUCER: ContextVar[tuple[str, int] | None] = ContextVar(
    "stepsync_active_producer", default=None
)
