"""Each trainer owns its buffers and state (codegen.runtime.trainer.Workspace): trainers of one
model are independent in threads, one trainer shared by threads takes turns, buffers are kept
for a few batch sizes only; and the build cache's index is safe to write from threads."""

from __future__ import annotations

import sys
import threading
import tracemalloc

import numpy as np
import pytest

import symbp as sb

BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("Cython") is None, reason="needs Cython"))]


def wide_mlp(width: int = 64, hidden: int = 256) -> sb.Model:
    m = sb.Model("wide")
    x, y = m.input("x", (width,)), m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (width, hidden)) + m.param("b1", (hidden,), init="zeros"))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (hidden, 10)) + m.param("b2", (10,), init="zeros"), y))
    return m


def stateful_rnn() -> sb.Model:
    m = sb.Model("srnn")
    s, y = m.input("s", (6, 8)), m.input("y", (16,))
    W, U = m.param("W", (8, 16)), m.param("U", (16, 16))
    hT, _ = sb.scan(lambda h, x: (sb.tanh(x @ W + h @ U), None), s, sb.zeros((16,)), stateful=True, label="rnn")
    m.minimize(sb.mse(hT, y))
    return m


def batches(model: str, rng, count: int, size: int = 32) -> list[dict]:
    if model == "wide":
        return [{"x": rng.normal(size=(size, 64)), "y": rng.integers(0, 10, size)} for _ in range(count)]
    return [{"s": rng.normal(size=(size, 6, 8)), "y": rng.normal(size=(size, 16))} for _ in range(count)]


def in_threads(*jobs) -> None:
    """Run the jobs at once, one thread each, switching between them as often as Python allows
    (so a race shows on NumPy too, whose ops hold the GIL only between calls)."""
    errors: list = []

    def guard(job):
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=guard, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]


def run(tr, data: list[dict], passes: int) -> list:
    """Gradients and a step on every batch, ``passes`` times: [(loss, gradients), ...]."""
    out = []
    for _ in range(passes):
        for b in data:
            g = tr.gradients(**b)
            out.append((tr.step(**b), g))
    return out


def same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for k, ((la, ga), (lb, gb)) in enumerate(zip(a, b)):
        assert la == lb, f"call {k}: loss {la} != {lb}"
        for name in ga:
            np.testing.assert_array_equal(ga[name], gb[name], err_msg=f"call {k}: gradient of {name}")


@pytest.mark.parametrize("model", ["wide", "srnn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_trainers_of_one_model_are_independent_in_threads(backend, model, rng):
    """Two trainers of one compiled model, each stepping in its own thread, compute exactly what
    they compute one after the other (they used to share the module's buffers and state)."""
    d = sb.derive(wide_mlp() if model == "wide" else stateful_rnn())
    make = [lambda s=s: sb.compile(d, backend=backend, dtype="float64", seed=s,
                                   optimizer=sb.optim.Adam(lr=1e-3)) for s in (1, 2)]
    data = [batches(model, rng, 3), batches(model, rng, 3)]
    passes = 20 if model == "wide" else 10
    want = [run(make[i](), data[i], passes) for i in range(2)]
    trs = [f() for f in make]
    if backend == "cython":
        assert trs[0].kernels is trs[1].kernels  # one cached module: what made them share buffers
    got: list = [None, None]

    def job(i):
        got[i] = run(trs[i], data[i], passes)

    in_threads(lambda: job(0), lambda: job(1))
    for i in range(2):
        same(got[i], want[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_trainer_shared_by_threads_takes_turns(backend, rng):
    """Two threads calling one trainer: each call sees its own batch's gradients (calls take turns
    on the trainer's buffers), and every step counts."""
    tr = sb.compile(sb.derive(wide_mlp()), backend=backend, dtype="float64", seed=0,
                    optimizer=sb.optim.SGD(lr=0.0))
    data = batches("wide", rng, 2)
    want = [tr.gradients(**b) for b in data]
    bad = [0, 0]

    def job(i):
        for _ in range(60):
            g = tr.gradients(**data[i])
            bad[i] += any(not np.array_equal(g[k], want[i][k]) for k in g)
            tr.step(**data[i])

    in_threads(lambda: job(0), lambda: job(1))
    assert bad == [0, 0]
    assert tr.t == 120


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffers_are_kept_for_a_few_batch_sizes(backend, rng):
    """Running 40 batch sizes holds the buffers of the last few, not of all 40 (measured by
    tracemalloc, which sees NumPy's allocations, whoever keeps them)."""
    d = sb.derive(wide_mlp(64, 512))
    sizes = [64 * k for k in range(1, 41)]
    tr = sb.compile(d, backend=backend, dtype="float64", seed=0, optimizer=sb.optim.SGD(lr=0.0))

    def held(trainer, batch_sizes) -> int:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for size in batch_sizes:
                b = {"x": rng.normal(size=(size, 64)), "y": rng.integers(0, 10, size)}
                trainer.step(**b)
                del b
            return tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()

    largest = held(sb.compile(d, backend=backend, dtype="float64", seed=0), sizes[-1:])
    everything = held(tr, sizes)
    keep = tr.workspace.keep
    assert len(tr.workspace.batches) == keep
    # Before: every size's buffers stayed (sum over 40 sizes = 20.5 times the largest's).
    assert everything <= (keep + 0.5) * largest, (everything, largest)
    # The sizes still held are the last ones used; one used again moves to the end.
    assert list(tr.workspace.batches) == sizes[-keep:]
    tr.loss(x=np.zeros((sizes[-keep], 64)), y=np.zeros(sizes[-keep], np.int64))
    assert list(tr.workspace.batches) == [*sizes[-keep + 1:], sizes[-keep]]


def test_cache_index_is_written_safely_from_threads(tmp_path, monkeypatch):
    """Trainers compiled in threads each record their own cache entry: the index was written
    through one temporary file per process, so two threads could swap (or lose) entries."""
    from types import SimpleNamespace

    from codegen.cython import build

    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path))
    jobs = [[(f"graph{i}-{k}", SimpleNamespace(__name__=f"module{i}_{k}")) for k in range(150)] for i in range(2)]

    def job(entries):
        return lambda: [build.remember(key, module, ("-O1",)) for key, module in entries]

    in_threads(*map(job, jobs))
    for entries in jobs:
        for key, module in entries:
            assert (tmp_path / "index" / build.cache_key(key, ("-O1",))).read_text() == module.__name__
