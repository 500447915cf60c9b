"""stepsync.history reads back exactly the rows wandb wrote to an offline run file."""

from __future__ import annotations

import logging
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from _wandb_helpers import records_of, rows_of, user_rows

from stepsync import history
from stepsync.history import HistoryReadError, find_run_dirs, read_history, read_records

BIG = "x" * 100_000  # one row of ~100 KB spans four 32 KiB blocks


def finished_run_file(offline_run: Any, rows: list[dict[str, Any]]) -> Path:
    """Log ``rows`` to a fresh offline run, finish it, and return its .wandb file."""
    run = offline_run()
    for row in rows:
        run.log(row)
    rows_of(run)  # finishes the run and waits for its exit record
    return Path(run.settings.sync_file)


def chunk_offsets(path: Path) -> list[int]:
    """File positions of every chunk header, walking the framing like the reader does."""
    data, pos, offsets = path.read_bytes(), 7, []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        offsets.append(pos)
        pos += 7 + int.from_bytes(data[pos + 4 : pos + 6], "little")
    return offsets


class TestReadHistory:
    def test_rows_come_back_in_order_with_values_and_step(self, offline_run):
        """Each logged row comes back once, in order, with its values and wandb's _step."""
        run = offline_run()
        for i in range(5):
            run.log({"train/loss": 1.0 / (i + 1), "label": f"row{i}", "flag": i % 2 == 0})
        rows = rows_of(run)
        assert user_rows(rows) == [
            {"_step": i, "train/loss": 1.0 / (i + 1), "label": f"row{i}", "flag": i % 2 == 0}
            for i in range(5)
        ]
        assert all(isinstance(row["_timestamp"], float) for row in rows)
        assert all(row["_runtime"] >= 0 for row in rows)

    def test_data_wandb_drops_is_absent(self, offline_run):
        """A row logged for a step below the current one is dropped by wandb: not in the file."""
        run = offline_run()
        run.log({"a": 1}, step=5)
        run.log({"b": 2}, step=3)
        run.log({"c": 3}, step=6)
        assert user_rows(rows_of(run)) == [{"_step": 5, "a": 1}, {"_step": 6, "c": 3}]

    def test_nested_dict_comes_back_nested(self, offline_run):
        """A logged nested dict is stored flattened by wandb and rebuilt as the same dict."""
        run = offline_run()
        run.log({"eval": {"acc": 0.5, "deep": {"n": 3, "s": "text"}}, "eval/flat": 1})
        assert user_rows(rows_of(run)) == [
            {"_step": 0, "eval": {"acc": 0.5, "deep": {"n": 3, "s": "text"}}, "eval/flat": 1}
        ]

    def test_row_larger_than_a_block(self, offline_run):
        """A row larger than a 32 KiB block is joined from its chunks intact."""
        path = finished_run_file(offline_run, [{"a": 0}, {"big": BIG}, {"a": 2}])
        assert user_rows(read_history(path)) == [
            {"_step": 0, "a": 0},
            {"_step": 1, "big": BIG},
            {"_step": 2, "a": 2},
        ]
        assert path.stat().st_size > 3 * 32768

    def test_accepts_run_dir_file_and_str(self, offline_run):
        """The run directory, its .wandb file and their str paths all give the same rows."""
        path = finished_run_file(offline_run, [{"a": 1}])
        expected = read_history(path)
        assert user_rows(expected) == [{"_step": 0, "a": 1}]
        for where in (path.parent, str(path.parent), str(path)):
            assert read_history(where) == expected

    def test_float_nan_and_inf_survive(self, offline_run):
        """Non-finite floats, which JSON proper lacks, decode to float nan and inf."""
        path = finished_run_file(offline_run, [{"nan": float("nan"), "inf": float("inf")}])
        (row,) = read_history(path)
        assert row["nan"] != row["nan"]
        assert row["inf"] == float("inf")


class TestRecords:
    def test_exit_and_metric_records_are_readable(self, offline_run):
        """read_records yields every record type, e.g. one metric per define_metric, one exit."""
        run = offline_run()
        run.define_metric("eval/acc", step_metric="epoch")
        run.log({"eval/acc": 0.5, "epoch": 1})
        metrics = records_of(run, "metric")
        assert [(m.metric.name, m.metric.step_metric) for m in metrics] == [("eval/acc", "epoch")]
        assert len(records_of(run, "exit")) == 1


class TestIncompleteFiles:
    def test_truncated_file_returns_complete_rows(self, offline_run, tmp_path):
        """A file cut anywhere returns exactly the rows whose records were complete."""
        path = finished_run_file(offline_run, [{"a": 0}, {"big": BIG}, {"a": 2}])
        full = read_history(path)
        data = path.read_bytes()
        cut_file = tmp_path / "cut.wandb"
        cuts = [*chunk_offsets(path)[1::3], 32768 + 3, len(data) - 1]
        seen_lengths = set()
        for cut in cuts:
            cut_file.write_bytes(data[:cut])
            rows = read_history(cut_file, wait_for_exit=False)
            assert rows == full[: len(rows)], cut
            seen_lengths.add(len(rows))
        assert {0, 1, 3} <= seen_lengths  # cuts before, inside and after the big row

    def test_zero_padded_tail_is_ignored(self, offline_run, tmp_path):
        """Zeros after the last record (preallocated space) read as the end of the data."""
        path = finished_run_file(offline_run, [{"a": 1}])
        padded = tmp_path / "padded.wandb"
        padded.write_bytes(path.read_bytes() + bytes(100))
        assert read_history(padded) == read_history(path)

    def test_empty_file_has_no_rows(self, tmp_path):
        """A file wandb created but has not written to yet reads as no rows."""
        empty = tmp_path / "run-empty.wandb"
        empty.write_bytes(b"")
        assert read_history(empty, wait_for_exit=False) == []

    def test_timeout_without_exit_warns_and_returns_rows(self, offline_run, tmp_path, caplog):
        """Without an exit record, read_history waits `timeout`, warns once, returns the rows."""
        path = finished_run_file(offline_run, [{"a": 0}, {"a": 1}])
        kinds = [r.WhichOneof("record_type") for r in read_records(path)]
        cut_file = tmp_path / "unfinished.wandb"
        # Small records, one chunk each; wandb < 0.18 writes more records after `exit`.
        exit_at = chunk_offsets(path)[kinds.index("exit")]
        cut_file.write_bytes(path.read_bytes()[:exit_at])  # `exit` and all after it dropped
        with caplog.at_level(logging.WARNING, logger="stepsync.history"):
            rows = read_history(cut_file, timeout=0.05)
        assert user_rows(rows) == [{"_step": 0, "a": 0}, {"_step": 1, "a": 1}]
        warnings = [r for r in caplog.records if r.name == "stepsync.history"]
        assert [r.levelno for r in warnings] == [logging.WARNING]
        assert "no exit record" in warnings[0].getMessage()

    def test_waits_for_the_rest_of_the_file(self, offline_run, tmp_path, monkeypatch):
        """A file completed while read_history waits is read to the end, the split row whole."""
        path = finished_run_file(offline_run, [{"a": 0}, {"big": BIG}, {"a": 2}])
        data, expected = path.read_bytes(), read_history(path)
        growing = tmp_path / "growing.wandb"
        growing.write_bytes(data[: 32768 + 100])  # ends inside the big row
        seen: list[int] = []
        read_new = history._LogReader.read_new

        def read_then_grow(reader: Any) -> None:
            read_new(reader)
            seen.append(len(reader.records))
            if len(seen) == 1:  # wandb-core writes the rest while the reader waits
                growing.write_bytes(data)

        monkeypatch.setattr(history._LogReader, "read_new", read_then_grow)
        assert read_history(growing, timeout=5) == expected
        assert len(seen) == 2
        assert seen[0] < seen[1]


def write_run_file(path: Path, records: list[Any]) -> Path:
    """Write ``records`` as a run file (one FULL chunk each; the records must be small)."""
    data = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for record in records:
        payload = record.SerializeToString()
        data += struct.pack("<IHB", zlib.crc32(payload, zlib.crc32(b"\x01")), len(payload), 1)
        data += payload
    assert len(data) < 32768
    path.write_bytes(bytes(data))
    return path


def python_backend_records(*, last_row_after_exit: bool) -> list[Any]:
    """The record order of wandb 0.12 to 0.17 (Python backend): an empty header, the rows,
    ``exit``, then (a last row), the summary, ``final`` and ``footer``."""
    from wandb.proto import wandb_internal_pb2 as pb

    def history(step: int) -> Any:
        record = pb.Record()
        record.history.item.add(key="a", value_json=str(step))
        record.history.item.add(key="_step", value_json=str(step))
        return record

    header, exit_, summary, final, footer = (pb.Record() for _ in range(5))
    header.header.SetInParent()
    exit_.exit.exit_code = 0
    summary.summary.update.add(key="a", value_json="2")
    final.final.SetInParent()
    footer.footer.SetInParent()
    rows = [history(0), history(1)]
    if last_row_after_exit:
        return [header, *rows, exit_, history(2), summary, final, footer]
    return [header, *rows, history(2), exit_, summary, final, footer]


class TestRecordsAfterExit:
    """wandb before 0.18 (the Python backend) writes the last history row, the summary, `final`
    and `footer` after the `exit` record: the reader waits for `final` there."""

    @pytest.mark.parametrize("last_row_after_exit", [False, True])
    def test_rows_and_records_after_exit_are_read(self, tmp_path, last_row_after_exit):
        records = python_backend_records(last_row_after_exit=last_row_after_exit)
        path = write_run_file(tmp_path / "run-legacy.wandb", records)
        assert [row["a"] for row in read_history(path, timeout=1)] == [0, 1, 2]
        kinds = [r.WhichOneof("record_type") for r in read_records(path, timeout=1)]
        assert kinds[kinds.index("exit") + 1 :][-3:] == ["summary", "final", "footer"]

    def test_waits_for_final_after_exit(self, tmp_path, monkeypatch):
        """A Python-backend file that has `exit` but not yet `final` is waited for."""
        records = python_backend_records(last_row_after_exit=True)
        path = tmp_path / "run-legacy.wandb"
        write_run_file(path, records[:4])  # header, two rows, `exit`
        read_new = history._LogReader.read_new
        calls: list[int] = []

        def read_then_grow(reader: Any) -> None:
            read_new(reader)
            calls.append(len(reader.records))
            if len(calls) == 1:  # the backend writes the rest while the reader waits
                write_run_file(path, records)

        monkeypatch.setattr(history._LogReader, "read_new", read_then_grow)
        assert [row["a"] for row in read_history(path, timeout=5)] == [0, 1, 2]
        assert len(calls) == 2

    def test_no_final_after_exit_warns_and_returns_rows(self, tmp_path, caplog):
        records = python_backend_records(last_row_after_exit=True)
        path = write_run_file(
            tmp_path / "run-legacy.wandb", records[:5]
        )  # through the row after `exit`
        with caplog.at_level(logging.WARNING, logger="stepsync.history"):
            rows = read_history(path, timeout=0.05)
        assert [row["a"] for row in rows] == [0, 1, 2]
        warnings = [r.getMessage() for r in caplog.records if r.name == "stepsync.history"]
        assert len(warnings) == 1
        assert "no final record" in warnings[0]


class TestBadFiles:
    def test_corrupt_record_raises(self, offline_run, tmp_path):
        """A changed byte inside a record fails its checksum: HistoryReadError, not bad rows."""
        path = finished_run_file(offline_run, [{"a": i} for i in range(5)])
        data = bytearray(path.read_bytes())
        offsets = chunk_offsets(path)
        data[offsets[len(offsets) // 2] + 7 + 1] ^= 0xFF  # a data byte of a middle record
        corrupt = tmp_path / "corrupt.wandb"
        corrupt.write_bytes(bytes(data))
        with pytest.raises(HistoryReadError, match="corrupt at byte"):
            read_history(corrupt)

    def test_impossible_chunk_length_raises(self, offline_run, tmp_path):
        """A chunk length reaching past its block is corruption, not a truncated tail."""
        path = finished_run_file(offline_run, [{"a": 1}])
        data = bytearray(path.read_bytes())
        data[chunk_offsets(path)[-1] + 5] = 0xFF  # high byte of the last chunk's length
        corrupt = tmp_path / "corrupt.wandb"
        corrupt.write_bytes(bytes(data))
        with pytest.raises(HistoryReadError, match="block boundary"):
            read_history(corrupt)

    @pytest.mark.parametrize(
        "content",
        [b"step,loss\n0,1.0\n", b":W&B\xe1\xbe\x07", b"\x00" * 64],
        ids=["csv", "unknown-version", "zeros"],
    )
    def test_non_wandb_file_raises(self, tmp_path, content):
        """A file that does not start with the wandb header raises HistoryReadError."""
        other = tmp_path / "run-other.wandb"
        other.write_bytes(content)
        with pytest.raises(HistoryReadError, match="not a wandb run file"):
            read_history(other)

    def test_error_is_a_value_error(self):
        """HistoryReadError is a ValueError, so generic handlers catch it."""
        assert issubclass(HistoryReadError, ValueError)

    def test_folder_without_run_file_raises(self, tmp_path):
        """A folder with no run-*.wandb file raises HistoryReadError at once, naming the fix."""
        with pytest.raises(HistoryReadError, match="find_run_dirs"):
            read_history(tmp_path)

    def test_missing_path_raises_file_not_found(self, tmp_path):
        """A path that does not exist raises FileNotFoundError."""
        with pytest.raises(FileNotFoundError):
            read_history(tmp_path / "nowhere")

    @pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("1", TypeError)])
    def test_bad_timeout_raises(self, tmp_path, timeout, error):
        """A negative or non-numeric timeout fails at the call site."""
        with pytest.raises(error):
            read_records(tmp_path, timeout=timeout)


class TestFindRunDirs:
    def test_two_runs_found_from_any_level(self, offline_run, tmp_path):
        """Two runs are listed once each, from the init dir, ./wandb, a run dir or a file."""
        first = offline_run()
        second = offline_run()
        expected = sorted(Path(r.settings.sync_dir) for r in (first, second))
        rows_of(first)
        rows_of(second)
        assert find_run_dirs(tmp_path) == expected
        assert find_run_dirs(tmp_path / "wandb") == expected
        assert find_run_dirs(expected[0]) == [expected[0]]
        assert find_run_dirs(second.settings.sync_file) == [Path(second.settings.sync_dir)]
        assert [len(read_history(d)) for d in expected] == [0, 0]

    def test_folder_with_several_runs_is_not_a_run(self, offline_run, tmp_path):
        """read_history on ./wandb holding several runs raises instead of picking one."""
        rows_of(offline_run())
        with pytest.raises(HistoryReadError):
            read_history(tmp_path / "wandb")

    def test_copied_run_dir_is_found(self, offline_run, tmp_path):
        """A run directory copied elsewhere (e.g. from a cluster) is still a run directory."""
        run = offline_run()
        run.log({"a": 1})
        rows_of(run)
        copy = tmp_path / "copied" / "offline-run-x"
        shutil.copytree(run.settings.sync_dir, copy)
        assert find_run_dirs(tmp_path / "copied") == [copy]
        assert user_rows(read_history(copy)) == [{"_step": 0, "a": 1}]
