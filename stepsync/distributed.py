"""Rank-aware steps over ``torch.distributed``: gather every rank's values of a step to one rank.

By default each rank manages its own steps and nothing crosses processes. Inside
``synced_step_scope(step)``, leaving the block sends this rank's values of ``step`` through the
process group's own collectives; the destination rank (rank 0) combines them per key (mean,
sum, min, max, or one key per rank) and commits one row. torch is never imported by stepsync:
without an initialized process group the scope runs as a group of one.

Contract: every rank of the group enters ``synced_step_scope`` for the same steps in the same
order. A rank that skipped or added a step makes every rank raise ``RankMismatchError`` at the
next exchange; a rank that never arrives makes the others raise it after the group's timeout.
"""

from __future__ import annotations

import ctypes
import logging
import pickle
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from stepsync._config import DEFAULT_PRIORITY
from stepsync._context import ACTIVE_SYNCED
from stepsync._errors import RankMismatchError
from stepsync._merge import Entry, merge
from stepsync._reduce import Payload, ReduceSpec, Reduction, Rules, as_number, combine
from stepsync._scope import StepScope
from stepsync._validate import check_data, check_priority, check_step

if TYPE_CHECKING:
    from stepsync._manager import StepManager

__all__ = [
    "RankMismatchError",
    "Reduction",
    "SyncedStep",
    "current_synced_step",
    "gather_step",
    "synced_step_scope",
]

logger = logging.getLogger("stepsync.distributed")

_SOURCE = "stepsync.distributed"

# A frame is this header then the pickled payload, zero-padded to the group's frame capacity.
_HEADER = struct.Struct("<4sHqqq")  # magic, version, exchange number, logical step, payload size
_MAGIC = b"SSYN"
_VERSION = 1
_INITIAL_CAPACITY = 4096


class _Group(NamedTuple):
    """An initialized process group to exchange over, and the global rank that combines."""

    dist: Any
    group: Any
    dst: int


class _GroupState:
    """Per-group counters that every rank updates identically from the gathered headers."""

    __slots__ = ("capacity", "exchanges")

    def __init__(self) -> None:
        self.exchanges = 0
        self.capacity = _INITIAL_CAPACITY


_groups: dict[Any, _GroupState] = {}


# ---------------------------------------------------------------------------- public API


class SyncedStep:
    """The step of a ``synced_step_scope``: log to it from any rank, read the combined row after."""

    __slots__ = ("_entries", "_manager", "result", "step")

    def __init__(self, step: int, manager: StepManager | None) -> None:
        #: The logical step this scope exchanges.
        self.step = step
        #: On the destination rank, after the block: the combined row; None elsewhere.
        self.result: dict[str, Any] | None = None
        self._manager = manager
        self._entries: list[Entry] = []

    def log(
        self, data: Mapping[str, Any], *, source: str | None = None, priority: int | None = None
    ) -> None:
        """Log ``data`` to this step from this rank, whether or not the rank has a wandb run."""
        if self._manager is not None:
            self._manager.log(data, self.step, source=source, priority=priority)
            return
        data = check_data(data)
        priority = DEFAULT_PRIORITY if priority is None else check_priority(priority)
        self._entries.append((priority, dict(data)))


def current_synced_step() -> SyncedStep | None:
    """The innermost active ``synced_step_scope`` of this context, or None."""
    synced = ACTIVE_SYNCED.get()
    return synced if isinstance(synced, SyncedStep) else None


@contextmanager
def synced_step_scope(
    step: int,
    *,
    reduce: ReduceSpec = None,
    group: Any = None,
    dst: int | None = None,
    run: Any = None,
) -> Iterator[SyncedStep]:
    """A ``step_scope(step)`` whose values are combined across the ranks of ``group`` on exit.

    ``reduce`` is one reduction for every key or a mapping of keys / glob patterns to
    reductions (default ``"mean"``). Values logged to ``run`` (default ``wandb.run``) through
    stepsync, or with ``.log()`` on the yielded ``SyncedStep``, are exchanged; ``dst`` (default:
    the group's first rank) commits the combined row, the other ranks commit nothing for ``step``.
    """
    step = check_step(step)
    rules = Rules(reduce)
    target = _resolve_group(group, dst)
    manager = _manager_of(run)
    synced = SyncedStep(step, manager)
    token = ACTIVE_SYNCED.set(synced)
    with StepScope(step):
        try:
            yield synced
        except Exception as error:
            # A rank that catches this error and carries on must still have joined this
            # exchange, or every later one would pair with the wrong step. Unless the group
            # itself is what failed: then the exchange could only fail (or wait) again.
            ACTIVE_SYNCED.reset(token)
            if not isinstance(error, RankMismatchError) and not _is_group_failure(error):
                try:
                    _exchange(synced, rules, target)
                except Exception:
                    logger.exception("stepsync: could not exchange step %d after an error", step)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: the process is leaving
            ACTIVE_SYNCED.reset(token)
            raise
        ACTIVE_SYNCED.reset(token)
        _exchange(synced, rules, target)


def gather_step(
    data: Mapping[str, Any],
    step: int,
    *,
    reduce: ReduceSpec = None,
    group: Any = None,
    dst: int | None = None,
) -> dict[str, Any] | None:
    """Combine every rank's ``data`` for ``step``; the combined dict on ``dst``, None elsewhere.

    A collective: every rank of ``group`` calls it for the same steps in the same order (and
    from one thread at a time). Without an initialized process group it combines this
    process's ``data`` alone.
    """
    data = check_data(data)
    step = check_step(step)
    rules = Rules(reduce)
    return _gather(dict(data), step, rules, _resolve_group(group, dst))


# ------------------------------------------------------------------------------ internals


def _resolve_group(group: Any, dst: int | None) -> _Group | None:
    """The group to exchange over; None without an initialized one (torch is not imported)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("stepsync: group= given but torch.distributed is not initialized")
        return None
    if dist.get_rank(group) < 0:
        raise ValueError("stepsync: this rank is not a member of the given process group")
    if dst is None:
        return _Group(dist, group, _global_rank(dist, group, 0))
    dst = check_step(dst, "dst")
    if group is not None and dist.get_group_rank(group, dst) < 0:
        raise ValueError(f"stepsync: dst={dst} is not a member of the given process group")
    if group is None and dst >= dist.get_world_size():
        raise ValueError(f"stepsync: dst={dst} is not a rank of the default process group")
    return _Group(dist, group, dst)


def _manager_of(run: Any) -> StepManager | None:
    """The stepsync manager of ``run`` (default ``wandb.run``); None without a real run."""
    if run is None:
        wandb = sys.modules.get("wandb")  # not imported: there is no run
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is None:
            return None
    from stepsync import _wandb
    from stepsync._manager import get_manager

    if _wandb.is_disabled(run) or _wandb.is_finished(run):
        return None  # mode="disabled": wandb's own no-op run; or a run that refuses data
    return get_manager(run)


def _is_group_failure(error: BaseException) -> bool:
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    return isinstance(dist_error, type) and isinstance(error, dist_error)


def _exchange(synced: SyncedStep, rules: Rules, target: _Group | None) -> None:
    """Take this rank's values of the step, combine them across ranks, log the result on dst."""
    manager = synced._manager
    if manager is not None:
        data = manager.take_step(synced.step)
    elif synced._entries:
        data, _ = merge(synced._entries)
        synced._entries = []
    else:
        data = {}
    result = _gather(data, synced.step, rules, target)
    synced.result = result
    if result and manager is not None:
        # Inside the still-open step_scope: the scope's exit commits it as the step's one row.
        manager.log(result, synced.step, source=_SOURCE, priority=0)


def _gather(
    data: dict[str, Any], step: int, rules: Rules, target: _Group | None
) -> dict[str, Any] | None:
    """Split numbers from other values, exchange them, and combine them on the destination."""
    numeric: dict[str, int | float] = {}
    objects: dict[str, Any] = {}
    for key, value in data.items():
        number = as_number(value)
        if number is None:
            objects[key] = value
        else:
            numeric[key] = number
    if target is None:
        return combine([Payload(0, numeric, tuple(objects))], {0: objects}, rules)

    dist, group, dst = target
    rank = dist.get_rank()
    pickled = b""
    if rank != dst and objects:
        # Pickled before any collective: a value that cannot travel must not strand the others.
        objects, pickled = _pickle_objects(objects, step)
    own = Payload(rank, numeric, tuple(objects))
    payloads = _all_gather_payloads(target, own, step)
    objects_by_rank: dict[int, dict[str, Any]] = {}
    if any(p.object_keys and p.rank != dst for p in payloads):
        # Only ranks other than dst send their non-numeric values, and only to dst; every
        # rank knows from the headers that this second collective happens.
        gathered: list[Any] | None = [None] * len(payloads) if rank == dst else None
        try:
            dist.gather_object(pickled, gathered, dst=dst, group=group)
        except RuntimeError as error:
            raise _lost_rank_error(step, rank, error) from error
        if gathered is not None:
            for payload, received in zip(payloads, gathered, strict=True):
                objects_by_rank[payload.rank] = pickle.loads(received) if received else {}
    if rank != dst:
        return None
    objects_by_rank[rank] = objects
    try:
        return combine(payloads, objects_by_rank, rules)
    except Exception:  # bookkeeping must not end a training loop: keep dst's own values
        logger.exception("stepsync: could not combine the ranks' values of step %d", step)
        return dict(data)


def _all_gather_payloads(target: _Group, own: Payload, step: int) -> list[Payload]:
    """One ``all_gather`` of fixed-size frames (a second one only when a payload outgrew them)."""
    dist, group, _ = target
    state = _groups.get(group)
    if state is None:
        state = _groups[group] = _GroupState()
    state.exchanges += 1
    # A plain tuple, so unpickling on a peer looks up no class of stepsync's.
    body = pickle.dumps(tuple(own), protocol=pickle.HIGHEST_PROTOCOL)
    frame = _HEADER.pack(_MAGIC, _VERSION, state.exchanges, step, len(body)) + body
    rank = own.rank
    started = time.monotonic()
    try:
        frames = _all_gather_frames(target, frame, state.capacity)
        headers = [_HEADER.unpack_from(f) for f in frames]
        largest = max((h[4] for h in headers if h[0] == _MAGIC), default=0) + _HEADER.size
        if largest > state.capacity:
            # Every rank sees the same headers, so every rank takes this branch together.
            state.capacity = 1 << (largest - 1).bit_length()
            frames = _all_gather_frames(target, frame, state.capacity)
            headers = [_HEADER.unpack_from(f) for f in frames]
    except RuntimeError as error:
        raise _lost_rank_error(step, rank, error, time.monotonic() - started) from error
    global_ranks = [_global_rank(dist, group, i) for i in range(len(frames))]
    _check_headers(headers, global_ranks, state.exchanges, step)
    return [
        Payload(*pickle.loads(f[_HEADER.size : _HEADER.size + h[4]]))
        for f, h in zip(frames, headers, strict=True)
    ]


def _all_gather_frames(target: _Group, frame: bytes, capacity: int) -> list[bytes]:
    """All-gather ``frame``, zero-padded to ``capacity`` bytes, from every rank of the group."""
    import torch  # already imported: a process group exists

    dist, group, _ = target
    # NCCL moves only CUDA tensors; the other backends take CPU tensors.
    if str(dist.get_backend(group)) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    world = dist.get_world_size(group)
    # A frame longer than ``capacity`` sends its head (with the header) in this round; the
    # sizes in the headers then make every rank run a second round with room for all of it.
    head = frame[:capacity]
    send = torch.zeros(capacity, dtype=torch.uint8)
    send[: len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
    send = send.to(device)
    received = [torch.empty(capacity, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(received, send, group=group)
    # ctypes reads each (contiguous, CPU) buffer in one copy, with no numpy needed.
    return [ctypes.string_at(t.data_ptr(), capacity) for t in (r.cpu() for r in received)]


def _global_rank(dist: Any, group: Any, group_rank: int) -> int:
    return group_rank if group is None else int(dist.get_global_rank(group, group_rank))


def _check_headers(
    headers: list[tuple[Any, ...]], global_ranks: list[int], exchange: int, step: int
) -> None:
    """Every rank must be at the same exchange of the same step, or none may go on."""
    foreign = [r for r, h in zip(global_ranks, headers, strict=True) if h[0] != _MAGIC]
    if foreign or any(h[1] != _VERSION for h in headers):
        raise RankMismatchError(
            f"stepsync: at the exchange of step {step}, rank(s) {foreign or global_ranks} sent "
            "something else: another collective on this group was paired with stepsync's. "
            "Every rank must run the same collectives in the same order.",
            step,
        )
    if all(h[2] == exchange and h[3] == step for h in headers):
        return
    steps = {r: int(h[3]) for r, h in zip(global_ranks, headers, strict=True)}
    described = ", ".join(f"rank {r} at step {s}" for r, s in steps.items())
    raise RankMismatchError(
        f"stepsync: ranks disagree on the synced step ({described}). Every rank must enter "
        "synced_step_scope for the same steps in the same order; one of them skipped a step "
        "or ran an extra one.",
        step,
        steps,
    )


def _lost_rank_error(
    step: int, rank: int, error: BaseException, waited: float | None = None
) -> RankMismatchError:
    after = f" after {waited:.1f} s" if waited is not None else ""
    return RankMismatchError(
        f"stepsync: rank {rank} could not exchange step {step}{after}: another rank of the "
        f"group did not join (it skipped this synced step, left the loop early, or died; "
        f"the group's timeout bounds the wait). Cause: {error}",
        step,
    )


def _pickle_objects(objects: dict[str, Any], step: int) -> tuple[dict[str, Any], bytes]:
    """The values that can travel, pickled; the others are dropped with a warning."""
    try:
        return objects, pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        kept = {}
        for key, value in objects.items():
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                logger.warning(
                    "stepsync: %r of step %d cannot be pickled; it is not sent to the "
                    "destination rank",
                    key,
                    step,
                )
            else:
                kept[key] = value
        return kept, pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)
