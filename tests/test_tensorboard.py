"""TensorBoard sync (issue 15, case 8): wandb-core writes the TensorBoard rows itself.

With ``wandb.init(sync_tensorboard=True)`` or ``wandb.tensorboard.patch()``, wandb-core reads the
tfevents files and flushes one history row per TensorBoard step; those rows never pass through
``Run.log``. wandb then owns the step: the Python side strips every explicit ``step`` before it
reaches wandb-core (``publish_step=not_using_tensorboard``), a ``commit=False`` value joins
whichever row wandb-core flushes next (usually a TensorBoard row), and ``step=s`` alone flushes a
row of its own. Plain wandb is the oracle: with stepsync on, every value it keeps must be kept, in
the same row (``_step``), and must reach wandb before ``finish()`` as it does natively.

Timing. wandb-core reads a tfevents file when told of it, then again 5 s after each end of file
(not configurable), and holds the newest TensorBoard step back until the next step's event (0.28.2
and later) or the run's end. So the native rows depend on when reads happen. To make them
deterministic and fast, the writer is created before the patch (so its creation does not notify
wandb) and wandb is told of its folder after the training loop, exactly as wandb's own patch does
(``run._tensorboard_callback``): wandb-core then reads every event in one pass, after it has
handled every Python-side call. "Before finish" is read from wandb-core's live sampled history:
the offline ``.wandb`` file is block-buffered by wandb-core (plain wandb: no history record in it
about 14 s after 8 committed rows), so it cannot show rows before ``finish()`` in a fast test.

Needs the ``tensorboard`` package (wandb's patch requires it) and torch's ``SummaryWriter``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb
from _wandb_helpers import AXIS, rows, rows_of, user_rows, wait_until

import stepsync

pytest.importorskip("tensorboard", reason="wandb's TensorBoard patch needs the tensorboard package")
SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter

STEPS = 8
#: The key wandb-core gives the scalar "loss" written under <root>/train.
TB_KEY = "train/loss"

Cell = tuple[str, Any, int]


def core_history(run: Any) -> dict[str, list[float]]:
    """The values per key of the rows wandb-core has accepted so far (its sampled history).

    wandb keeps every value while a key has few (it samples only long histories).
    """
    handle = run._interface.deliver_request_sampled_history()
    result = handle.wait_or(timeout=5)
    return {
        item.key: [float(v) for v in (*item.values_int, *item.values_float)]
        for item in result.response.sampled_history_response.item
    }


def cells(table: list[dict[str, Any]]) -> set[Cell]:
    """Every (key, value, _step) of the rows, stepsync's axis key left out."""
    return {
        (k, v, row["_step"]) for row in table for k, v in row.items() if k not in {"_step", AXIS}
    }


@pytest.fixture
def tb_patch() -> Iterator[Callable[[Path], None]]:
    """``tb_patch(root)`` runs ``wandb.tensorboard.patch(root_logdir=root)``; undone at teardown."""

    def patch(root: Path) -> None:
        wandb.tensorboard.patch(root_logdir=str(root))

    yield patch
    wandb.tensorboard.unpatch()


def tensorboard_run(
    start: Callable[..., Any],
    patch: Callable[[Path], None],
    root: Path,
    log_step: Callable[[Any, int], None],
    before_patch: Callable[[Any], None] | None = None,
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """One run: a SummaryWriter writes ``loss`` at ``global_step=i`` and ``log_step(run, i)`` logs
    beside it, for STEPS steps. Returns what wandb-core held before finish, and the run's rows."""
    run = start()
    if before_patch is not None:
        before_patch(run)
    logdir = root / "train"
    writer = SummaryWriter(log_dir=str(logdir))  # before the patch: wandb is told of it below
    patch(root)
    for i in range(STEPS):
        log_step(run, i)
        writer.add_scalar("loss", i, global_step=i)
    writer.flush()
    run._tensorboard_callback(str(logdir), save=False, root_logdir=str(root))
    # Every TensorBoard step but the newest is flushed as soon as wandb-core has read the file.
    wait_until(lambda: len(core_history(run).get(TB_KEY, [])) >= STEPS - 1, timeout=10)
    before_finish = core_history(run)
    writer.close()
    table = user_rows(rows_of(run))
    wandb.tensorboard.unpatch()
    return before_finish, table


def assert_like_native(
    native: tuple[dict[str, list[float]], list[dict[str, Any]]],
    synced: tuple[dict[str, list[float]], list[dict[str, Any]]],
    key: str,
) -> None:
    """Every value native wandb kept is kept with stepsync, in the same row, and was in wandb-core
    before finish() whenever it was natively."""
    (native_before, native_rows), (synced_before, synced_rows) = native, synced
    missing = cells(native_rows) - cells(synced_rows)
    assert not missing, f"kept natively, lost or moved with stepsync: {sorted(missing)}"
    assert native_before.get(key), "scenario check: natively the values reach wandb before finish"
    late = set(native_before[key]) - set(synced_before.get(key, []))
    assert not late, f"{key} values in wandb natively before finish() but not with stepsync: {late}"


class TestTensorBoard:
    def test_commit_false_values_join_tensorboard_rows_as_natively(
        self, offline_run, tb_patch, tmp_path
    ):
        """commit=False values (wandb.watch, SB3) join wandb-core's TensorBoard rows as natively."""

        def log_step(run: Any, i: int) -> None:
            run.log({"w": i}, commit=False)

        native = tensorboard_run(offline_run, tb_patch, tmp_path / "native", log_step)
        stepsync.patch()
        synced = tensorboard_run(offline_run, tb_patch, tmp_path / "synced", log_step)
        assert_like_native(native, synced, "w")

    def test_explicit_steps_are_stripped_as_natively(self, offline_run, tb_patch, tmp_path):
        """Under TensorBoard sync wandb ignores step=: each such call is a row of its own, now."""

        def log_step(run: Any, i: int) -> None:
            run.log({"w": i}, step=i)

        native = tensorboard_run(offline_run, tb_patch, tmp_path / "native", log_step)
        stepsync.patch()
        synced = tensorboard_run(offline_run, tb_patch, tmp_path / "synced", log_step)
        assert_like_native(native, synced, "w")

    def test_patch_after_the_first_log_calls(self, offline_run, tb_patch, tmp_path):
        """What stepsync holds when TensorBoard gets patched mid-run lands where wandb puts it."""

        def before_patch(run: Any) -> None:
            run.log({"a": 0})  # a row of its own
            run.log({"x": 1}, commit=False)  # natively open: joins the first TensorBoard row

        def log_step(run: Any, i: int) -> None:
            run.log({"w": i}, commit=False)

        native = tensorboard_run(offline_run, tb_patch, tmp_path / "native", log_step, before_patch)
        stepsync.patch()
        synced = tensorboard_run(offline_run, tb_patch, tmp_path / "synced", log_step, before_patch)
        assert_like_native(native, synced, "w")

    def test_wandb_owns_the_step_from_run_start(self, offline_run, tb_patch, tmp_path):
        """Patched before wandb.init, with no writer yet: rows as natively, steps below kept too."""
        calls: list[tuple[dict[str, int], int | None, bool | None]] = [
            ({"a": 1}, None, False),
            ({"b": 2}, 5, None),  # wandb strips the step; commit None then flushes the row
            ({"c": 3}, 2, None),  # below 5, yet kept natively: wandb-core never sees a step
            ({"d": 4}, None, False),
            ({"e": 5}, None, None),
        ]

        def run_calls(name: str) -> list[dict[str, Any]]:
            tb_patch(tmp_path / name)
            run = offline_run()
            for data, step, commit in calls:
                run.log(data, step=step, commit=commit)
            table = rows(run)
            wandb.tensorboard.unpatch()
            return table

        native = run_calls("native")
        stepsync.patch()
        synced = run_calls("synced")
        assert cells(native) <= cells(synced)
