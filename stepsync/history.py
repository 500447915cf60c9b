"""Read the rows a wandb run really recorded, from its offline ``run-<id>.wandb`` file.

The file is what ``wandb sync`` would upload, so it shows exactly which values wandb kept and
which it dropped. Usage::

    from stepsync.history import find_run_dirs, read_history

    for run_dir in find_run_dirs("wandb"):
        for row in read_history(run_dir):
            print(row["_step"], row)

File format: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then LevelDB log framing
(32 KiB blocks of chunks ``crc32 u32 | length u16 | type u8 | data``; a block trailer shorter
than a chunk header is zero padding) around serialized ``wandb_internal_pb2.Record`` messages.
wandb's checksum is the plain (IEEE, unmasked) CRC-32 of the type byte followed by the data.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "HistoryReadError",
    "find_run_dirs",
    "read_history",
    "read_records",
]

logger = logging.getLogger("stepsync.history")

_FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK_SIZE = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# CRC of each chunk type byte, the seed the data's CRC continues from.
_TYPE_CRC = {kind: zlib.crc32(bytes([kind])) for kind in (_FULL, _FIRST, _MIDDLE, _LAST)}
#: The name wandb gives a run directory: ``run-<start time>-<id>`` (``offline-run-`` offline).
RUN_DIR_NAME = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>.+)$")
_POLL_INTERVAL = 0.02  # seconds between looks at a file whose run has not written `exit` yet


class HistoryReadError(ValueError):
    """The file is not a wandb run file, or it is corrupt before its last complete record."""


def find_run_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Return the run directories at or below ``path``, in start-time order (their names begin
    with it).

    ``path`` may be a run directory, a ``.wandb`` file, a folder of run directories such as
    ``./wandb``, or any folder holding runs deeper down (the ``dir`` given to ``wandb.init``).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    if root.is_file():
        return [root.parent]
    if RUN_DIR_NAME.match(root.name) or _run_files(root):
        return [root]
    found: list[Path] = []
    # followlinks=False, and links skipped: `wandb/latest-run` links to a run listed anyway.
    for directory, subdirs, _ in os.walk(root, followlinks=False):
        here = Path(directory)
        keep = []
        for name in sorted(subdirs):
            child = here / name
            if child.is_symlink():
                continue
            if RUN_DIR_NAME.match(name) or _run_files(child):
                found.append(child)
            elif not name.startswith("."):
                keep.append(name)
        subdirs[:] = keep  # not into runs: their files/ may hold anything
    return sorted(found, key=lambda run: (run.name, str(run)))


def read_records(
    run_dir: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    wait_for_exit: bool = True,
) -> list[Any]:
    """Return every complete ``wandb_internal_pb2.Record`` of a run file, in file order.

    Waits up to ``timeout`` seconds for the end of the run (offline ``run.finish()`` can return
    before wandb has written the file): the ``exit`` record, and for a run written by wandb's
    Python backend (wandb < 0.18, or a legacy service) the ``final`` record, because that backend
    writes the last history row, the summary, ``final`` and ``footer`` after ``exit``. After
    that, or with ``wait_for_exit=False``, returns what is complete, ignoring a truncated tail.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory or file: {path}")

    reader = _LogReader(_run_file(path))
    deadline = time.monotonic() + timeout
    reader.read_new()
    while wait_for_exit and not reader.exited:
        if time.monotonic() >= deadline:
            logger.warning(
                "%s: no %s record after %.1f s; returning the %d complete records so far",
                reader.path,
                "final" if reader.exit_seen else "exit",
                timeout,
                len(reader.records),
            )
            break
        time.sleep(_POLL_INTERVAL)
        reader.read_new()
    return reader.records


def read_history(
    run_dir: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    wait_for_exit: bool = True,
) -> list[dict[str, Any]]:
    """Return one dict per history row wandb recorded, in file order, values JSON-decoded.

    Rows hold wandb's own keys (``_step``, ``_runtime``, ``_timestamp``) beside the logged
    ones; a nested dict comes back nested, a whole float such as 1.0 as the int 1 (wandb's
    JSON). Waiting works as in :func:`read_records`.
    """
    records = read_records(run_dir, timeout=timeout, wait_for_exit=wait_for_exit)
    return [_row(record.history) for record in records if record.HasField("history")]


def _row(history: Any) -> dict[str, Any]:
    """Rebuild a row from a HistoryRecord, as wandb's own ``dict_from_proto_list`` does."""
    row: dict[str, Any] = {}
    for item in history.item:
        keys = list(item.nested_key) or [item.key]
        level = row
        for key in keys[:-1]:
            level = level.setdefault(key, {})
        level[keys[-1]] = json.loads(item.value_json)
    return row


def _run_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("run-*.wandb"))


def _run_file(path: Path) -> Path:
    """The ``.wandb`` file of a run directory, or ``path`` itself if it is a file."""
    if path.is_file():
        return path
    files = _run_files(path)
    if len(files) == 1:
        return files[0]
    if files:
        names = ", ".join(f.name for f in files)
        raise HistoryReadError(f"{path}: several run files ({names}); pass one of them")
    raise HistoryReadError(
        f"{path}: no run-*.wandb file here; find_run_dirs() lists the runs below a folder"
    )


class _LogReader:
    """Reads a run file incrementally: each call parses only what was appended since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[Any] = []
        #: The run is complete: its ``exit`` record is in, and for the Python backend its
        #: ``final`` record too (that backend writes the last row and the summary after ``exit``).
        self.exited = False
        self.exit_seen = False
        #: Written by wandb-core (wandb >= 0.18): its header names the producer version, and
        #: ``exit`` comes after every history row and summary. wandb 0.12 to 0.17 (the Python
        #: backend) write an empty header and ``exit``, [history], summary, ``final``, ``footer``.
        self.core: bool | None = None
        self._offset = 0  # end of the last complete record (or of the file header)

    def read_new(self) -> None:
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        if self._offset == 0:
            if not _FILE_HEADER.startswith(data[: len(_FILE_HEADER)]):
                raise HistoryReadError(f"{self.path}: not a wandb run file (bad header)")
            if len(data) < len(_FILE_HEADER):
                return  # header not written yet
            self._offset = len(_FILE_HEADER)
            data = data[len(_FILE_HEADER) :]
        # Imported by name: wandb's generated protobuf modules carry no type information.
        proto = importlib.import_module("wandb.proto.wandb_internal_pb2")
        decode_error = importlib.import_module("google.protobuf.message").DecodeError
        for payload in self._complete_payloads(data):
            try:
                record = proto.Record.FromString(payload)
            except decode_error as exc:
                raise HistoryReadError(f"{self.path}: not a wandb Record: {exc}") from exc
            self.records.append(record)
            kind = record.WhichOneof("record_type")
            if kind == "header":
                # wandb < 0.18's own protobuf has no `version_info` field (AttributeError)
                version_info = getattr(record.header, "version_info", None)
                self.core = bool(getattr(version_info, "producer", ""))
            elif kind == "exit":
                self.exit_seen = True
            elif kind in ("final", "footer"):
                self.exited = True
            if self.exit_seen and self.core:
                self.exited = True

    def _complete_payloads(self, data: bytes) -> list[bytes]:
        """Join the chunks in ``data`` (file bytes from ``self._offset`` on) into payloads."""
        base = self._offset  # file position of data[0]; blocks are aligned on file positions
        pos = base
        payloads: list[bytes] = []
        fragments: list[bytes] | None = None
        while (found := self._next_chunk(data, base, pos)) is not None:
            chunk_pos, kind, chunk = found
            if (kind in (_FULL, _FIRST)) != (fragments is None):
                self._corrupt(chunk_pos, "chunk out of sequence")
            pos = chunk_pos + _CHUNK_HEADER.size + len(chunk)
            if fragments is None:
                fragments = [chunk]
            else:
                fragments.append(chunk)
            if kind in (_FULL, _LAST):
                payloads.append(b"".join(fragments))
                fragments = None
                self._offset = pos
        return payloads

    def _next_chunk(self, data: bytes, base: int, pos: int) -> tuple[int, int, bytes] | None:
        """Return (file position, type, data) of the chunk at ``pos``; None if none is complete."""
        block_left = _BLOCK_SIZE - pos % _BLOCK_SIZE
        if block_left < _CHUNK_HEADER.size:
            pos += block_left  # zero-padded block trailer
            block_left = _BLOCK_SIZE
        start = pos - base + _CHUNK_HEADER.size
        if start > len(data):
            return None  # end of file, or a chunk header not completely written yet
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos - base)
        if length > block_left - _CHUNK_HEADER.size:
            self._corrupt(pos, "chunk length crosses a block boundary")
        if start + length > len(data):
            return None  # chunk data not completely written yet
        chunk = data[start : start + length]
        if kind not in _TYPE_CRC or zlib.crc32(chunk, _TYPE_CRC[kind]) != crc:
            if not data[pos - base :].strip(b"\0"):
                return None  # only zeros left: preallocated space, nothing written there yet
            self._corrupt(pos, "checksum mismatch or unknown chunk type")
        return pos, kind, chunk

    def _corrupt(self, pos: int, what: str) -> NoReturn:
        raise HistoryReadError(f"{self.path}: corrupt at byte {pos}: {what}")
