"""The atlas's process group under torchrun: a fresh namespace per group, bounded waits, one error.

torchrun (its c10d rendezvous) keeps one TCPStore for the whole job and hands the same address to
every group it starts, so a group restarted after a worker died finds the dead group's keys there:
a rank that reads a dead peer's address before its new peer has written its own connects to a
process that is gone (gloo gives up, or a pair waits forever). `join` starts each group in keys of
its own: rank 0 names a new generation, every other rank registers under the generation it read
and waits until rank 0 has welcomed *this* process (a stale generation's welcome names another
process), so no rank ever reads a key of a dead group.

The group's waits (`Group.barrier`) go through the store and give up after `timeout` seconds
(``FEATVIS_ATLAS_TIMEOUT``, default 1800), and a rank whose own work raised tells the others,
who stop at their next wait (`PeerFailed`, which names the rank and not its error: the error is
shown once, by the rank that raised). A Python error is not retried: the job's restarts (torchrun
``--max-restarts``) are for ranks that die (a kill, a lost node); a restarted group that finds an
earlier group's error stops at once (`EarlierFailure`).

Examples:
    >>> group = join(rank=0, world_size=2)   # under torchrun, before init_process_group
    >>> group.barrier("manifest")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
import os
import time
import uuid

import torch.distributed as dist

from featvis.errors import FeatvisError

TIMEOUT_ENV = "FEATVIS_ATLAS_TIMEOUT"
_POLL = 0.05
_FAILED = "featvis/failed"  # in the job's store, outside every generation: survives restarts


class PeerFailed(FeatvisError):
    """Another rank's work raised (its error is shown by that rank): this rank stops too."""


class PeerLost(FeatvisError):
    """A collective failed: a peer is gone (killed, its node lost); torchrun restarts the group."""


class GroupTimeout(FeatvisError):
    """A wait for the other ranks went past the timeout (``FEATVIS_ATLAS_TIMEOUT``)."""


class EarlierFailure(FeatvisError):
    """An earlier group of this torchrun job failed with a Python error: a restart would repeat it."""


def timeout_seconds() -> float:
    """The group's timeout in seconds: ``FEATVIS_ATLAS_TIMEOUT``, default 1800 (30 minutes)."""
    text = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise FeatvisError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds above 0, e.g. 600")
    return seconds


@dataclass
class Group:
    """This process's place in a group: its store (the generation's keys), rank, size and timeout."""

    store: dist.Store
    job_store: dist.Store
    rank: int
    world_size: int
    timeout: float
    waits: int = field(default=0)

    def barrier(self, what: str) -> None:
        """Wait until every rank is here; `PeerFailed` if a rank's work raised, `GroupTimeout` past
        the timeout."""
        self.waits += 1
        key = f"wait/{self.waits}"
        self.store.add(key, 1)
        deadline = time.monotonic() + self.timeout
        while True:
            arrived = self.store.add(key, 0)
            if arrived >= self.world_size:
                return
            self.check()
            if time.monotonic() > deadline:
                raise GroupTimeout(
                    f"rank {self.rank}: {arrived} of {self.world_size} ranks reached '{what}' within "
                    f"{self.timeout:g} s; the others are stuck or gone (set {TIMEOUT_ENV} to wait longer)"
                )
            time.sleep(_POLL)

    def check(self) -> None:
        """`PeerFailed` if a rank of this group has failed."""
        if self.store.check(["failed"]):
            raise PeerFailed(
                f"rank {self.rank} stopped: {self.store.get('failed').decode()} (its error is shown above)"
            )

    def fail(self, err: BaseException) -> None:
        """Tell the others this rank's work raised `err` (the first failure of the group is kept), and
        the job that a restart would repeat it."""
        what = f"rank {self.rank} failed with {type(err).__name__}"
        try:
            self.store.compare_set("failed", "", what)
            self.job_store.compare_set(_FAILED, "", f"{_attempt()} {what}")
        except Exception:  # noqa: BLE001 - the store may be gone with the job: the error goes on anyway
            pass


def join(rank: int, world_size: int) -> Group:
    """This process's group, in keys of its own (see the module), from torchrun's environment."""
    timeout = timeout_seconds()
    job_store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timedelta(seconds=timeout)))
    if job_store.check([_FAILED]):
        attempt, _, what = job_store.get(_FAILED).decode().partition(" ")
        if int(attempt) < _attempt():  # a restart after it (not a later call in the same processes)
            raise EarlierFailure(
                f"not retried: an earlier attempt of this job stopped on a Python error ({what}, shown "
                "above); a restart would repeat it. Fix it and run again: the finished units are kept"
            )
    me = f"{uuid.uuid4().hex}"
    deadline = time.monotonic() + timeout
    if rank == 0:
        generation = uuid.uuid4().hex
        job_store.set("featvis/generation", generation)
        for other in range(1, world_size):
            key = f"featvis/{generation}/join/{other}"
            while not job_store.check([key]):
                _give_up(deadline, rank, world_size, timeout)
                time.sleep(_POLL)
            job_store.set(f"featvis/{generation}/welcome/{other}", job_store.get(key))
    else:
        while True:
            while not job_store.check(["featvis/generation"]):
                _give_up(deadline, rank, world_size, timeout)
                time.sleep(_POLL)
            generation = job_store.get("featvis/generation").decode()
            job_store.set(f"featvis/{generation}/join/{rank}", me)
            welcome = f"featvis/{generation}/welcome/{rank}"
            while job_store.get("featvis/generation").decode() == generation:
                if job_store.check([welcome]) and job_store.get(welcome).decode() == me:
                    break
                _give_up(deadline, rank, world_size, timeout)
                time.sleep(_POLL)
            else:
                continue  # a dead group's generation: join the new one
            break
    store = dist.PrefixStore(f"featvis/{generation}", job_store)  # keys "featvis/<generation>/..."
    return Group(store, job_store, rank, world_size, timeout)


def _attempt() -> int:
    """Which group of the torchrun job this is: 0, then 1 after the first restart, ..."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def _give_up(deadline: float, rank: int, world_size: int, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise GroupTimeout(
            f"rank {rank}: the {world_size} ranks did not all start within {timeout:g} s "
            f"(set {TIMEOUT_ENV} to wait longer)"
        )
