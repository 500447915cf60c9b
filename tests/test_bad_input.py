"""Bad and unusual input: call-site errors, huge and nested dicts, NaN, numpy/torch, media, env."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wandb
from _wandb_helpers import AXIS, QUIET, declared_metrics, rows, tables_work_offline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import bad_data, bad_steps, metric_values, negative_steps

import stepsync
from stepsync import StepManager, get_manager, step_scope
from stepsync._wandb import MERGES_NESTED_DICTS

# One run serves every generated example: each rejected call must leave no trace at all.
FIXTURE_REUSE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def manager(offline_run) -> StepManager:
    """A manager on a fresh offline run that never commits on its own."""
    return StepManager(offline_run(), flush_interval=QUIET)


def untouched(manager: StepManager) -> None:
    """A rejected call left nothing behind: no log counted, nothing pending, nothing written."""
    stats = manager.get_stats()
    assert (stats["total_logs"], stats["pending_entries"], stats["wandb_calls"]) == (0, 0, 0)


class TestCallSiteErrors:
    @FIXTURE_REUSE
    @given(data=bad_data)
    def test_data_not_a_mapping_of_str_is_a_type_error(self, manager, data):
        """log(data) with a non-mapping or a non-str key raises TypeError and records nothing."""
        with pytest.raises(TypeError):
            manager.log(data)
        untouched(manager)

    def test_committed_keys_do_not_let_a_bad_key_through(self, manager):
        """Keys committed before do not let a new non-str key beside them through."""
        manager.log({"a": 1, "b": 2}, step=0)
        manager.flush()
        with pytest.raises(TypeError, match="keys must be strings"):
            manager.log({"a": 1, 7: 2}, step=1)
        with pytest.raises(TypeError, match="keys must be strings"):
            manager.log(types.MappingProxyType({"a": 1, None: 2}), step=1)  # not a dict
        assert manager.get_stats()["total_logs"] == 1

    def test_keys_past_the_seen_keys_limit_are_still_declared(self, manager, monkeypatch):
        """A job that logs new keys every step: past the limit of remembered keys (which keeps
        memory bounded), new keys are still looked at, and declared on the axis."""
        monkeypatch.setattr(stepsync._metrics, "SEEN_MAX", 10)
        manager.log({"a": 1}, step=5)
        manager.flush()
        manager.log({"a": 0}, step=2)  # a late row: native step 6, the axis switch
        for step in range(6, 50):
            manager.log({f"eval/sample_{step}": step}, step=step)
        with pytest.raises(TypeError, match="keys must be strings"):
            manager.log({"eval/sample_49": 1, 3: 2}, step=49)
        manager.run.finish()
        assert manager.get_stats()["total_logs"] == 46  # the refused call is not counted
        declared = {name for name, _ in declared_metrics(manager.run)}
        assert {"eval/sample_6", "eval/sample_49"} <= declared

    @FIXTURE_REUSE
    @given(step=bad_steps)
    def test_non_integer_step_is_a_type_error(self, manager, step):
        """A step that is not an integer (bool and float included) raises TypeError everywhere."""
        with pytest.raises(TypeError):
            manager.log({"a": 1}, step=step)
        with pytest.raises(TypeError):
            manager.update_step(step)
        with pytest.raises(TypeError):
            step_scope(step).__enter__()
        untouched(manager)

    @FIXTURE_REUSE
    @given(step=negative_steps)
    def test_negative_step_is_a_value_error(self, manager, step):
        """A negative step raises ValueError at the call site."""
        with pytest.raises(ValueError, match=">= 0"):
            manager.log({"a": 1}, step=step)
        with pytest.raises(ValueError, match=">= 0"):
            manager.update_step(step)
        untouched(manager)

    def test_bad_priority_and_commit_fail_at_the_call_site(self, manager):
        """priority must be an int >= 0."""
        with pytest.raises(TypeError):
            manager.log({"a": 1}, priority=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority"):
            manager.log({"a": 1}, priority=-1)
        untouched(manager)

    def test_patched_wandb_log_raises_the_same_types(self, offline_run):
        """Through the patch, bad calls raise TypeError/ValueError like a direct manager call."""
        stepsync.patch()
        run = offline_run(reinit="finish_previous")
        with pytest.raises(TypeError):
            wandb.log(["a", 1])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            wandb.log({1: "a"})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            wandb.log({"a": 1}, step=2.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=">= 0"):
            run.log({"a": 1}, step=-3)
        untouched(get_manager(run))

    @pytest.mark.parametrize(
        ("option", "value", "error"),
        [
            ("buffer_size", 0, ValueError),
            ("buffer_size", 2.5, TypeError),
            ("flush_interval", -1, ValueError),
            ("flush_interval", "2", TypeError),
            ("late", "sometimes", ValueError),
            ("axis_key", "_step", ValueError),
            ("axis_key", "", ValueError),
        ],
    )
    def test_bad_manager_options_fail_at_construction(self, offline_run, option, value, error):
        """StepManager and configure() refuse bad options with TypeError/ValueError."""
        with pytest.raises(error):
            StepManager(offline_run(), **{option: value})
        with pytest.raises(error):
            stepsync.configure(**{option: value})

    def test_configure_refuses_unknown_options(self):
        """configure(bogus=...) raises TypeError naming the known options."""
        with pytest.raises(TypeError, match="buffer_size"):
            stepsync.configure(bogus=1)


class TestUnusualValues:
    def test_ten_thousand_keys_in_one_call_land_in_one_row(self, offline_run):
        """One call with 10,000 keys: one row with every key and value."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        data = {f"layer{i}/norm": i / 7 for i in range(10_000)}
        start = time.perf_counter()
        with step_scope(0):
            manager.log(data)
        elapsed = time.perf_counter() - start
        (row,) = rows(run)
        assert {k: v for k, v in row.items() if k not in (AXIS, "_step")} == data
        assert manager.get_stats()["pending_entries"] == 0
        assert elapsed < 10.0  # no quadratic blow-up (declaring 10,000 keys takes ~1.5 s here)

    def test_nested_dicts_come_back_whole(self, offline_run):
        """A nested dict lands as wandb stores it and reads back nested, at its step."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(2):
            manager.log({"eval": {"acc": 0.5, "per_class": {"cat": 1, "dog": 2}}, "loss": 1})
        assert rows(run) == [
            {
                "eval": {"acc": 0.5, "per_class": {"cat": 1, "dog": 2}},
                "loss": 1,
                AXIS: 2,
                "_step": 2,
            }
        ]

    def test_nested_dicts_from_two_sources_merge_like_wandb(self, offline_run):
        """Two sources' nested dicts under one top key end as plain wandb ends them: every leaf
        kept (wandb >= 0.18), or the later dict whole (wandb < 0.18)."""
        native = offline_run()
        native.log({"eval": {"acc": 1}}, commit=False)
        native.log({"eval": {"loss": 2}})
        (plain,) = rows(native)
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(0):
            manager.log({"eval": {"acc": 1}}, source="metrics")
            manager.log({"eval": {"loss": 2}}, source="loss")
        (row,) = rows(run)
        assert plain["eval"] == ({"acc": 1, "loss": 2} if MERGES_NESTED_DICTS else {"loss": 2})
        assert row["eval"] == plain["eval"]

    def test_nan_and_infinities_pass_through(self, offline_run):
        """NaN, inf and -inf (float and numpy) are values like any other."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        with step_scope(1):
            manager.log({"nan": math.nan, "inf": math.inf, "ninf": -math.inf})
            manager.log({"np_nan": np.float64("nan"), "np_inf": np.float32("inf")}, priority=0)
        (row,) = rows(run)
        assert math.isnan(row["nan"])
        assert math.isnan(row["np_nan"])
        assert (row["inf"], row["ninf"], row["np_inf"]) == (math.inf, -math.inf, math.inf)

    @FIXTURE_REUSE
    @given(values=st.lists(metric_values, min_size=1, max_size=20))
    def test_values_are_passed_to_wandb_untouched(self, manager, values):
        """Whatever value is logged is what wandb receives (same objects, merged dict aside)."""
        seen: list[dict[str, Any]] = []
        original = stepsync._wandb.native_log

        def spy(run: Any, data: Any, step: int, shared: bool = False) -> int:
            seen.append(data)
            return step

        stepsync._wandb.native_log = spy  # wandb itself is not needed to check identity
        try:
            data = {f"k{i}": v for i, v in enumerate(values)}
            manager.log(data, step=manager.get_stats()["wandb_calls"] + 1000)
            manager.flush()
        finally:
            stepsync._wandb.native_log = original
        (row,) = seen
        assert all(row[key] is value for key, value in data.items())


class TestNumpyAndTorch:
    def test_numpy_scalars_as_values_and_steps(self, offline_run):
        """numpy integer scalars are accepted as steps; numpy scalars as values land as numbers."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"f32": np.float32(1.5), "i64": np.int64(7)}, step=np.int64(3))
        manager.update_step(np.int32(4))
        manager.log({"u8": np.uint8(9)})
        with step_scope(np.uint16(5)):
            manager.log({"f16": np.float16(0.5)})
        manager.flush()
        assert rows(run) == [
            {"f32": 1.5, "i64": 7, AXIS: 3, "_step": 3},
            {"u8": 9, AXIS: 4, "_step": 4},
            {"f16": 0.5, AXIS: 5, "_step": 5},
        ]

    @pytest.mark.parametrize("step", [np.float64(3.0), np.bool_(True), np.array([3])])
    def test_numpy_non_integer_steps_are_refused(self, manager, step):
        """numpy floats, bools and arrays are not steps: TypeError."""
        with pytest.raises(TypeError):
            manager.log({"a": 1}, step=step)
        untouched(manager)

    def test_torch_scalars_as_values_and_steps(self, offline_run):
        """torch integer scalars are accepted as steps; 0-d tensors as values land as numbers."""
        torch = pytest.importorskip("torch")
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        manager.log({"loss": torch.tensor(0.25), "count": torch.tensor(3)}, step=torch.tensor(2))
        with step_scope(torch.tensor(6, dtype=torch.int32)):
            manager.log({"acc": torch.tensor(0.5, dtype=torch.float64)})
        manager.flush()
        assert rows(run) == [
            {"loss": 0.25, "count": 3, AXIS: 2, "_step": 2},
            {"acc": 0.5, AXIS: 6, "_step": 6},
        ]

    def test_torch_non_integer_steps_are_refused(self, manager):
        """torch float, bool and multi-element tensors are not steps: TypeError."""
        torch = pytest.importorskip("torch")
        for step in (torch.tensor(3.0), torch.tensor([1, 2]), torch.tensor(True)):
            with pytest.raises(TypeError):
                manager.log({"a": 1}, step=step)
        untouched(manager)


class TestMedia:
    @tables_work_offline
    def test_media_objects_arrive_whole_in_the_right_row(self, offline_run):
        """wandb.Image, Table and Histogram land complete in the row of their step."""
        run = offline_run()
        manager = StepManager(run, flush_interval=QUIET)
        pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
        for step in range(3):
            with step_scope(step):
                manager.log({"loss": step}, source="trainer", priority=0)
                if step == 1:
                    manager.log(
                        {
                            "samples": wandb.Image(pixels, caption="s1"),
                            "preds": wandb.Table(columns=["x", "y"], data=[[1, 2], [3, 4]]),
                            "weights": wandb.Histogram(np.arange(10)),
                        },
                        source="eval",
                        priority=1,
                    )
        manager.log({"late_image": wandb.Image(pixels)}, step=0)  # late: an extra row at step 0
        manager.flush()
        got = rows(run)
        media_rows = [r for r in got if "samples" in r]
        assert len(media_rows) == 1
        row = media_rows[0]
        assert (row[AXIS], row["loss"]) == (1, 1)
        assert row["samples"]["_type"] == "image-file"
        assert (row["samples"]["width"], row["samples"]["height"]) == (8, 8)
        assert (row["preds"]["_type"], row["preds"]["nrows"], row["preds"]["ncols"]) == (
            "table-file",
            2,
            2,
        )
        assert row["weights"]["_type"] == "histogram"
        assert sum(row["weights"]["values"]) == 10
        files = Path(run.settings.files_dir)
        assert (files / row["samples"]["path"]).is_file()
        assert (files / row["preds"]["path"]).is_file()
        late = got[-1]
        assert (late[AXIS], late["late_image"]["_type"]) == (0, "image-file")


class TestGarbageSettings:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("STEPSYNC_BUFFER_SIZE", "lots"),
            ("STEPSYNC_BUFFER_SIZE", "-5"),
            ("STEPSYNC_FLUSH_INTERVAL", "soon"),
            ("STEPSYNC_FLUSH_INTERVAL", "nan"),
            ("STEPSYNC_LATE", "sometimes"),
        ],
    )
    def test_garbage_env_setting_warns_once_and_uses_the_default(
        self, offline_run, monkeypatch, caplog, variable, value
    ):
        """A garbage STEPSYNC_* value: one clear warning naming it; the built-in default is used."""
        monkeypatch.setenv(variable, value)
        run = offline_run()
        with caplog.at_level(logging.WARNING, logger="stepsync"):
            manager = get_manager(run)
            for step in range(3):
                with step_scope(step):
                    manager.log({"a": step})
            manager.log({"late": 1}, step=0)  # the default policy, "axis", keeps it
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("stepsync")]
        assert len(warnings) == 1
        assert variable in warnings[0]
        assert repr(value) in warnings[0]
        assert [(r.get("late"), r[AXIS]) for r in rows(run)][-1] == (1, 0)

    def test_garbage_enable_flag_never_breaks_import(self, tmp_path):
        """STEPSYNC_ENABLED=maybe: `import wandb` works, with one warning line, and no patch."""
        code = "import wandb, stepsync; print(stepsync.is_patched())"
        env = {"PATH": "/usr/bin:/bin", "STEPSYNC_ENABLED": "maybe", "HOME": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "False"
        assert proc.stderr.count("STEPSYNC_ENABLED") == 1
