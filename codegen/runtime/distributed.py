"""Data-parallel training over MPI (``distributed="mpi"``): one process per rank, each with
the whole model, each computing the gradients of its own examples.

Imports only NumPy; ``mpi4py`` is imported when a distributed trainer is made, so the module
is copied verbatim into standalone packages, where mpi4py is an optional extra.

A step (``Group.step``) runs the generated ``gradients`` on the rank's examples, packs every
gradient, scaled by the rank's example count, into ONE flat buffer followed by the running
statistics' new values (BatchNorm; scaled the same way), the scaled loss and the count itself,
reduces it, and runs the generated ``update`` on the result divided by the total count: the
update of the mean loss over all ranks' examples, clipped by the global norm of that reduced
gradient. Every rank keeps the example-weighted mean of the ranks' running statistics (where
PyTorch's DDP keeps rank 0's). Each rank draws its own dropout masks (``rank_seed``).

How the sum is taken so that all ranks hold bitwise-identical parameters after every step:
MPI does not promise that ``Allreduce`` hands every rank the same bits (an implementation may
add in a different order on each rank), so the sum is made identical by construction:

- up to ``GATHER_UP_TO`` ranks, ``Allgather`` of every rank's buffer, then each rank adds them
  in rank order. Elementwise IEEE additions in a fixed order: the same bits on every rank and
  in every run, on any CPU (the update after it is the same on ranks of one CPU type: the
  Cython backend compiles for the CPU it runs on). Each rank receives (ranks - 1) buffers, no more than the ~3 buffers
  of the other way at these sizes.
- beyond, ``Allreduce`` (the library's bandwidth-optimal algorithm: ~2 buffers per rank)
  followed by ``Bcast`` of rank 0's result (~1 more). Identical bits on every rank; from run
  to run as reproducible as the library's algorithm choice (fixed for a fixed rank count and
  size in MPICH and Open MPI).

``Reduce`` to rank 0 then ``Bcast`` would also be identical by construction, but MPICH's
``Reduce`` of a 340 kB buffer took ~1.2 ms on 2 ranks of this machine against ~0.2 ms for
``Allreduce`` and ~0.1 ms for ``Allgather`` (``benchmarks/mpi.py`` measures the step's).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

LAUNCHERS = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
             ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"), ("PMIX_SIZE", "PMIX_RANK"))
"""Environment variables that MPI launchers set in every process they start (MPICH's Hydra and
Intel MPI, Open MPI, MVAPICH, PMIx): (size, rank)."""

INSTALL = 'distributed="mpi" needs mpi4py and an MPI: pip install "symbp[mpi]" (or, in a package symbp built, ' \
          'pip install "PACKAGE[mpi]"), or pip install mpi4py to use the MPI already on this machine'

GATHER_UP_TO = 4
"""Largest rank count summed by allgather and a fixed-order sum (see above)."""

RUNNING = "\0running:"
"""Prefix of the running statistics' entries in the flat buffer (not a parameter name)."""


def rank_seed(seed: int, rank: int) -> int:
    """The key of rank ``rank``'s random numbers (dropout): the trainer's seed on rank 0, and for
    the others the seed moved by a multiple of the golden ratio's 64-bit fraction, so no two
    ranks (and no rank and another seed's rank 0 nearby) share a stream."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**64

_warned = False


def launched() -> tuple[int, int] | None:
    """``(rank, size)`` when an MPI launcher started this process with more than one rank, read
    from the environment (without importing mpi4py), else None."""
    for size, rank in LAUNCHERS:
        try:
            n, r = int(os.environ[size]), int(os.environ.get(rank, "0"))
        except (KeyError, ValueError):
            continue
        if n > 1:
            return r, n
    return None


def warn_if_alone() -> None:
    """Warn once (from rank 0) when mpiexec started this process but the trainer is not distributed."""
    global _warned
    found = launched()
    if found is None or _warned:
        return
    _warned = True
    if found[0] == 0:
        warnings.warn(f"this process is one of {found[1]} started by an MPI launcher, but the trainer is not "
                      'distributed: every rank trains alone on its own copy. Compile with distributed="mpi" '
                      "(symbp train --mpi) to train one model on all ranks.", RuntimeWarning, stacklevel=5)


def group(kind):
    """The Group for ``distributed=kind`` (None: not distributed, and warn if mpiexec started us)."""
    if kind is None:
        warn_if_alone()
        return None
    if kind != "mpi":
        raise ValueError(f"distributed must be None or 'mpi', got {kind!r}")
    return Group()


class Group:
    """The processes of ``MPI.COMM_WORLD`` training one model together.

    Making one imports mpi4py and makes an uncaught exception on any rank stop the whole job
    (``MPI.Abort`` after printing it) rather than leave the other ranks waiting in a collective.
    """

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError(f"{INSTALL} ({e})") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._flat: tuple | None = None
        self._gathered: dict = {}  # every rank's buffer by (shape, dtype), for the allgather sum
        if self.size > 1:
            abort_on_exception(self.comm)

    def __repr__(self) -> str:
        return f"<mpi rank {self.rank} of {self.size}>"

    # -- collectives ----------------------------------------------------------------------
    def sum(self, values) -> np.ndarray:
        """The sum over ranks of ``values`` (float64), the same bits on every rank."""
        send = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(send)
        self._reduce(send, out)
        return out

    def _reduce(self, send: np.ndarray, out: np.ndarray) -> None:
        """Sum ``send`` over ranks into ``out``, the same bits on every rank (see the module docstring)."""
        if self.size == 1:
            np.copyto(out, send)
        elif self.size <= GATHER_UP_TO:
            key = (send.shape, send.dtype.str)
            got = self._gathered.get(key)
            if got is None:
                got = self._gathered[key] = np.empty((self.size, *send.shape), send.dtype)
            self.comm.Allgather(send, got)
            np.add(got[0], got[1], out=out)
            for r in range(2, self.size):  # in rank order, on every rank
                np.add(out, got[r], out=out)
        else:
            self.comm.Allreduce(send, out, op=self.MPI.SUM)
            self.comm.Bcast(out, root=0)  # rank 0's bits for all

    def join(self, tr) -> None:
        """Check that every rank compiled the same model, then give every rank rank 0's
        parameters (one flat message): from here on all ranks step in lockstep.

        Raises:
            DataError: on every rank, when the ranks' models, dtypes or optimisers differ.
        """
        if self.size == 1:
            return
        from .trainer import DataError

        mine = (tr.kernels.MODEL, str(tr.dtype), sorted((k, tuple(v)) for k, v in tr.kernels.PARAMS.items()),
                sorted(tr.kernels.SLOTS), sorted(tr.hyper))
        theirs = self.comm.allgather(mine)
        if any(t != theirs[0] for t in theirs):
            odd = next(r for r, t in enumerate(theirs) if t != theirs[0])
            err = DataError(f"distributed: rank {odd} compiled {theirs[odd][0]!r} ({theirs[odd][1]}) with other "
                            f"parameters or optimiser than rank 0's {theirs[0][0]!r} ({theirs[0][1]}); every rank "
                            "must compile the same model with the same optimiser and dtype")
            err.collective = True  # found by every rank at once: no rank waits for another, nothing to abort
            raise err
        flat = np.concatenate([v.reshape(-1) for v in tr.params.values()]) if tr.params else np.empty(0, tr.dtype)
        self.comm.Bcast(flat, root=0)
        at = 0
        for v in tr.params.values():
            v.reshape(-1)[:] = flat[at:at + v.size]
            at += v.size

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (a list by rank), None on the others."""
        return self.comm.gather(obj, root=0)

    # -- the training loop's (training.fit) ------------------------------------------------
    def evaluate(self, tr, data: dict) -> dict:
        """``training.evaluate`` over ``data`` (the whole set, on every rank), each rank taking
        its part of the examples; the means are over all of them, the same on every rank."""
        from .training import accuracy_pair, evaluate

        batched = [k for k, (shape, _) in tr.kernels.INPUTS.items() if shape[:1] == (None,) and k in data]
        if not batched:  # nothing to share out (evaluate says what is missing)
            return evaluate(tr, data)
        part = shard(len(data[batched[0]]), self.rank, self.size)
        local = {k: np.asarray(v)[part] if k in batched else v for k, v in data.items()}
        m = part.stop - part.start
        out = evaluate(tr, local) if m else {}
        keys = ["loss"] + (["accuracy"] if accuracy_pair(tr) else [])
        sums = self.sum([out.get(k, 0.0) * m for k in keys] + [m])
        return {k: float(sums[i] / sums[-1]) for i, k in enumerate(keys)}

    def rank_state(self, tr, correct: int):
        """What a checkpoint keeps of each rank (collective): on rank 0, ``(ranks, arrays)``: per
        rank its accuracy count and how many carries each loop has, and the carries of ranks 1..
        as arrays ``_rank<r>.carry.<loop>.<k>`` (rank 0's are the trainer's own); elsewhere
        ``(None, None)``."""
        got = self.gather((correct, {loop: [np.asarray(a) for a in v] for loop, v in tr.carries.items()}))
        if self.rank:
            return None, None
        ranks, arrays = [], {}
        for r, (c, carries) in enumerate(got):
            ranks.append({"correct": c, "carries": {loop: len(v) for loop, v in carries.items()}})
            if r:
                arrays.update({f"_rank{r}.carry.{loop}.{k}": a for loop, v in carries.items() for k, a in enumerate(v)})
        return ranks, arrays

    def restore_rank_state(self, tr, path, ranks, arrays: dict) -> int:
        """Restore this rank's carries from a checkpoint's ``rank_state``; returns its accuracy count."""
        from .trainer import DataError

        if not isinstance(ranks, list) or len(ranks) != self.size:
            raise DataError(f"resume: {path} does not hold the state of {self.size} ranks")
        mine = ranks[self.rank]
        if self.rank:
            carries = {}
            for loop, count in mine["carries"].items():
                keys = [f"_rank{self.rank}.carry.{loop}.{k}" for k in range(count)]
                lost = [k for k in keys if k not in arrays]
                if lost:
                    raise DataError(f"{path}: the carried state {', '.join(map(repr, lost))} is missing")
                carries[loop] = tuple(np.array(arrays[k], dtype=tr.dtype, order="C") for k in keys)
            tr._set_carries(carries)
        return mine["correct"]

    # -- the step -------------------------------------------------------------------------
    def _buffers(self, tr):
        """The flat send and receive buffers (gradients, then the running statistics' new values,
        then loss and example count) and the views into both, made at the first step (a Group
        serves one trainer)."""
        if self._flat is None:
            running = getattr(tr.kernels, "BUFFERS", {})
            shapes = {**tr.kernels.PARAMS, **{RUNNING + k: s for k, (s, _) in running.items()}}
            total = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
            send, recv = np.zeros(total + 2, tr.dtype), np.zeros(total + 2, tr.dtype)
            views, at = {}, 0
            for k, s in shapes.items():
                n = int(np.prod(s, dtype=np.int64))
                views[k] = (send[at:at + n].reshape(s), recv[at:at + n].reshape(s))
                at += n
            self._flat = (send, recv, views, total)
        return self._flat

    def step(self, tr, data: dict) -> float:
        """One optimiser update of ``tr`` from the gradient of the mean loss over every rank's
        examples (``data`` holds this rank's; it may be empty). Returns that mean loss; when it
        is not finite, nothing is updated on any rank."""
        k = tr.kernels
        if self.size == 1:
            return k.step(tr.params, tr.state, data, tr.hyper, tr.t, tr.workspace)
        send, recv, views, total = self._buffers(tr)
        n = examples(k, data)
        # Each rank draws its own dropout masks: the same numbers on every rank would drop the
        # same units of every rank's examples, a correlation one process never has.
        tr.workspace.rng = (rank_seed(tr.seed, self.rank), tr.t)
        if n:
            loss, grads = k.gradients(tr.params, data, tr.workspace)
            for name, g in grads.items():
                np.multiply(g, n, out=views[name][0])
            for name in tr.buffers:  # running statistics from this rank's batch, weighted like the gradients
                np.multiply(tr.workspace.running[name], n, out=views[RUNNING + name][0])
            send[total] = loss * n
        else:  # a short last batch left this rank nothing: it adds zeros
            send[:total + 1] = 0
        send[total + 1] = n
        self._reduce(send, recv)
        count = float(recv[total + 1])
        loss = float(recv[total]) / count
        if not np.isfinite(loss):
            return loss
        np.divide(recv[:total], count, out=recv[:total])
        # every rank keeps the example-weighted mean of the ranks' running statistics (the same bits)
        for name in tr.buffers:
            dict.__setitem__(tr.workspace.running, name, np.array(views[RUNNING + name][1], dtype=tr.dtype))
        k.update(tr.params, tr.state, {name: v[1] for name, v in views.items() if not name.startswith(RUNNING)},
                 tr.hyper, tr.t, tr.workspace)
        return loss


def examples(kernels, data: dict) -> int:
    """The number of examples in ``data``: the length of its first batched input (1 if none is)."""
    for name, (shape, _) in kernels.INPUTS.items():
        if shape[:1] == (None,) and name in data:
            return len(data[name])
    return 1


def shard(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s part of ``n`` examples: contiguous, sizes differing by at most one
    (the first ``n % size`` ranks take one more), as ``np.array_split`` cuts."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def abort_on_exception(comm) -> None:
    """Make an uncaught exception print its traceback, naming the rank, then ``Abort`` the job:
    the other ranks would otherwise wait for this one in their next collective for ever."""
    previous = sys.excepthook
    if getattr(previous, "_symbp_abort", False):
        return

    def hook(kind, value, tb):
        if getattr(value, "collective", False):  # every rank raised it together: each exits by itself
            previous(kind, value, tb)
            return
        sys.stderr.write(f"[rank {comm.Get_rank()} of {comm.Get_size()}] failed; stopping all ranks\n")
        previous(kind, value, tb)
        sys.stderr.flush()
        # Abort tears the job down at once: give the launcher a moment to pass the message on
        # (without it, MPICH's mpiexec was seen to lose every rank's output)
        time.sleep(0.5)
        comm.Abort(1)

    hook._symbp_abort = True
    sys.excepthook = hook


def stop_all(code: int) -> int:
    """``code``; when it is an error and this process is one rank of several, first stop the
    whole job: a command line returning 1 on one rank would leave the others waiting."""
    MPI = sys.modules.get("mpi4py.MPI")  # only if the run imported it: a plain run stays plain
    if code and MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized() \
            and MPI.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(code)
    return code


def is_root(tr) -> bool:
    """Whether ``tr``'s process writes files and prints: rank 0, or any trainer not distributed."""
    dist = getattr(tr, "dist", None)
    return dist is None or dist.rank == 0
