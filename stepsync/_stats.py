"""The counters of one manager, and the snapshot ``get_stats()`` returns (README, "Statistics")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

#: Other names for counters, reported beside them (``stepsync.compat`` adds the old tool's).
_aliases: dict[str, str] = {}


def add_alias(alias: str, name: str) -> None:
    """Report counter ``name`` under ``alias`` too, in every ``get_stats()``."""
    _aliases[alias] = name


@dataclass
class Stats:
    """How many calls went where, and what happened on the way. Updated under the manager's lock."""

    dropped_logs: int = 0
    step_conflicts: int = 0
    late_logs: int = 0
    key_conflicts: int = 0
    step_jumps: int = 0
    failed_flushes: int = 0
    failed_values: int = 0
    dropped_values: int = 0
    wandb_calls: int = 0
    calls_saved: int = 0
    #: ``late="raise"`` refusals: counted in ``total_logs`` only.
    refused_logs: int = 0

    def snapshot(self, pending_steps: int, pending_entries: int) -> dict[str, int]:
        """Every counter, with ``total_logs``: each call is counted where it went (pending, in a
        row or a failed one, dropped or refused), so the log path keeps no counter of its own."""
        counters = asdict(self)
        refused = counters.pop("refused_logs")
        in_rows = self.wandb_calls + self.calls_saved + self.failed_flushes
        total = pending_entries + in_rows + self.dropped_logs + refused
        snapshot = {
            "total_logs": total,
            **counters,
            "pending_steps": pending_steps,
            "pending_entries": pending_entries,
        }
        for alias, name in _aliases.items():
            snapshot[alias] = snapshot[name]
        return snapshot

    def reset(self) -> None:
        """Every counter back to 0 (a forked child starts its own count)."""
        for field in fields(self):
            setattr(self, field.name, 0)
