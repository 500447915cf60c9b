"""Scopes shared by threads: the last scope of a step to close commits it, and the timer waits."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import wandb
from _wandb_helpers import QUIET, rows_of, user_rows

import stepsync


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    """These tests log through the patched wandb.log."""
    stepsync.patch()
    yield
    stepsync.unpatch()


class TestSharedScopes:
    def test_step_open_in_another_thread_waits_for_it(self, offline_run):
        """Two threads in step_scope(1): the row is committed once, when the last one leaves."""
        run = offline_run(reinit="finish_previous")
        inside, go = threading.Event(), threading.Event()

        def worker() -> None:
            with stepsync.step_scope(1):
                inside.set()
                go.wait()
                wandb.log({"worker": 1})

        thread = threading.Thread(target=worker)
        thread.start()
        inside.wait()
        with stepsync.step_scope(0):
            wandb.log({"main": 0})
        with stepsync.step_scope(1):
            wandb.log({"main": 1})
        assert stepsync.get_manager(run).get_stats()["wandb_calls"] == 1  # step 0 only
        go.set()
        thread.join()
        assert user_rows(rows_of(run)) == [
            {"main": 0, "stepsync/step": 0, "_step": 0},
            {"main": 1, "worker": 1, "stepsync/step": 1, "_step": 1},
        ]
        assert stepsync.get_manager(run).get_stats()["late_logs"] == 0

    def test_idle_flush_leaves_a_step_with_an_open_scope_alone(self, offline_run):
        """A closed, idle step whose scope is still open is not committed by the timer."""
        run = offline_run(reinit="finish_previous")
        manager = stepsync.StepManager(run, flush_interval=0.05)
        with stepsync.step_scope(3):
            wandb.log({"a": 1})
            manager.update_step(4)  # step 3 is now closed
            manager.commit_idle_steps()  # two timer ticks without new data: step 3 sat idle ...
            manager.commit_idle_steps()  # ... for a whole interval (no sleeping)
            assert manager.get_stats()["pending_steps"] == 1
        manager.log({"b": 2}, step=5)
        manager.update_step(6)
        manager.commit_idle_steps()
        manager.commit_idle_steps()  # no scope is open on step 5: the timer commits it
        assert manager.get_stats()["wandb_calls"] == 2
        assert [r["stepsync/step"] for r in rows_of(run)] == [3, 5]

    def test_idle_flush_waits_while_a_closed_step_still_gets_data(self, offline_run):
        """The timer commits a closed step only after a whole tick without new data for it."""
        run = offline_run(reinit="finish_previous")
        manager = stepsync.StepManager(run, flush_interval=QUIET)
        manager.log({"a": 1}, step=5)
        manager.update_step(6)  # step 5 is closed
        manager.commit_idle_steps()  # first tick: notes step 5's bucket
        manager.log({"b": 2}, step=5)  # a straggler arrives before the next tick
        manager.commit_idle_steps()  # step 5 changed since the last tick: it waits
        assert manager.get_stats()["wandb_calls"] == 0
        manager.commit_idle_steps()  # a tick without new data: step 5 is idle, and committed
        assert user_rows(rows_of(run)) == [{"a": 1, "b": 2, "stepsync/step": 5, "_step": 5}]
