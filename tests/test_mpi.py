"""Data-parallel training over MPI (``distributed="mpi"``), on 2 ranks started by ``mpiexec``.

The ranks run this file as a script (``mpiexec -n 2 python tests/test_mpi.py CASE OUT``);
rank 0 compares with a single-process trainer on the whole batch and writes what it found
to OUT (JSON), which the tests read. Skipped when mpi4py or mpiexec is missing
(``pip install -e ".[mpi]"``; ``.ci/run`` does).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve()
TOL = 1e-12
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # two ranks on two cores: one thread each


# -- the ranks' side (run under mpiexec) -------------------------------------------------------

def mlp(stateful: bool = False):
    import symbp as sb

    m = sb.Model("mpi_mlp")
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (5, 8)) + m.param("b1", (8,), init="zeros"))
    logits = h @ m.param("W2", (8, 3)) + m.param("b2", (3,), init="zeros")
    m.output("logits", logits)
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def lstm(stateful: bool = False):
    import symbp as sb

    m = sb.Model("mpi_lstm_stateful" if stateful else "mpi_lstm")
    s, y = m.input("s", (4, 3)), m.input("y", (), dtype="int64")
    hs = sb.layers.LSTM(5, stateful=stateful, name="lstm")(s)
    m.minimize(sb.softmax_cross_entropy(hs[:, -1] @ m.param("W", (5, 3)), y))
    return m


MODELS = {"mlp": mlp, "lstm": lstm}


def data(model: str, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = {"x": rng.normal(size=(n, 5))} if model == "mlp" else {"s": rng.normal(size=(n, 4, 3))}
    return {**x, "y": rng.integers(0, 3, n)}


def _compile(model: str, backend: str, distributed, seed: int = 0, stateful: bool = False):
    import symbp as sb

    opt = sb.optim.Adam(lr=0.05, clip_norm=0.1)  # the gradients' norms are 0.2-0.5: clipping is at work
    with warnings.catch_warnings():  # rank 0's reference trainer would say that it trains alone
        warnings.simplefilter("ignore", RuntimeWarning)
        return sb.compile(sb.derive(MODELS[model](stateful)), backend=backend, dtype="float64", seed=seed,
                          optimizer=opt, distributed=distributed)


def _max_err(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in b)


def _identical(comm, params: dict) -> bool:
    """Whether every rank holds the same bits."""
    mine = b"".join(np.ascontiguousarray(v).tobytes() for v in params.values())
    return len(set(comm.allgather(mine))) == 1


def case_steps(comm) -> dict:
    """Several steps on per-rank shards against one process on the whole batch, with each of
    the two ways of summing (distributed.GATHER_UP_TO)."""
    from codegen.runtime import distributed
    from codegen.runtime.distributed import shard

    out = {}
    for backend, model, split, how in itertools.product(("numpy", "cython"), MODELS, ("equal", "unequal"),
                                                         ("allgather", "allreduce")):
        n = 8 if split == "equal" else 7
        distributed.GATHER_UP_TO = 4 if how == "allgather" else 1
        tr = _compile(model, backend, "mpi", seed=comm.rank)  # rank 0's weights reach every rank
        ref = _compile(model, backend, None) if comm.rank == 0 else None
        losses = []
        for k in range(4):
            batch = data(model, n, seed=k)
            part = shard(n, comm.rank, comm.size)
            loss = tr.step(**{key: v[part] for key, v in batch.items()})
            if ref is not None:
                losses.append(abs(loss - ref.step(**batch)))
        identical = _identical(comm, tr.params)
        if ref is not None:
            out[f"{backend}-{model}-{split}-{how}"] = {"params": _max_err(tr.params, ref.params),
                                                         "loss": max(losses), "identical": identical}
    return out


def regularised():
    import symbp as sb

    m = sb.Model("mpi_regularised")
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    h = sb.layers.BatchNorm(name="bn")(sb.layers.Dense(8, name="fc")(x))
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(3, name="out")(sb.dropout(sb.tanh(h), 0.5)), y))
    return m


def case_regularised(comm) -> dict:
    """BatchNorm and dropout on 2 ranks: the ranks keep the example-weighted mean of their
    running statistics (the same bits on every rank), and draw different dropout masks."""
    import symbp as sb
    from codegen.runtime.distributed import shard

    def make(backend, dist):  # seed 0 everywhere: a lone trainer starts from rank 0's weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return sb.compile(sb.derive(regularised()), backend=backend, dtype="float64",
                              optimizer=sb.optim.SGD(lr=0.1), distributed=dist)

    out = {}
    for backend in ("numpy", "cython"):
        tr, batch = make(backend, "mpi"), data("mlp", 7)
        tr.step(**{k: v[shard(7, comm.rank, comm.size)] for k, v in batch.items()})
        both = {k: np.stack(comm.allgather(np.array(v))) for k, v in tr.buffers.items()}
        # the same examples on both ranks: with equal masks the step would be that of one process
        same = make(backend, "mpi")
        same.step(**data("mlp", 4, seed=3))
        if comm.rank == 0:
            mean = {}
            for r in range(comm.size):  # each rank's own statistics (BatchNorm is before the dropout)
                alone, part = make(backend, None), shard(7, r, comm.size)
                alone.step(**{k: v[part] for k, v in batch.items()})
                for k, v in alone.buffers.items():
                    mean[k] = mean.get(k, 0) + v * (part.stop - part.start) / 7
            one = make(backend, None)
            one.step(**data("mlp", 4, seed=3))
            out[backend] = {"buffers": max(float(np.abs(both[k][0] - mean[k]).max()) for k in mean),
                            "identical": all(bool((b[0] == b[1:]).all()) for b in both.values()),
                            "masks": _max_err(same.params, one.params)}
    return out


def case_fit(comm, folder: str) -> dict:
    """fit: sharding with an empty shard, validation, checkpoints and resume, stateful carries."""
    out = {}
    train, val = data("mlp", 11, seed=1), data("mlp", 5, seed=2)
    opts = {"epochs": 2, "batch_size": 5, "validation": val, "progress": False, "seed": 3}
    from codegen.runtime import training

    evaluated, evaluate = [], training.evaluate  # what each rank validates: its part
    training.evaluate = lambda t, d, *a: (evaluated.append(len(d["y"])), evaluate(t, d, *a))[1]
    tr = _compile("mlp", "numpy", "mpi")  # batches of 5, 5, 1: the last leaves rank 1 nothing
    hist = tr.fit(train, checkpoint=f"{folder}/mlp.npz", **opts)
    training.evaluate = evaluate
    everyone = comm.allgather(evaluated)
    out["validated"] = [sum(e) for e in everyone], max(max(e) for e in everyone)
    out["mlp_identical"] = _identical(comm, tr.params)
    first = _compile("mlp", "numpy", "mpi")
    first.fit(train, checkpoint=f"{folder}/mlp_half.npz", **{**opts, "epochs": 1})
    resumed = _compile("mlp", "numpy", "mpi")
    resumed.fit(train, resume=f"{folder}/mlp_half.npz", **opts)
    out["mlp_resume"] = comm.allreduce(_max_err(resumed.params, tr.params), op=max_op())
    # stateful: each rank carries its own rows of the state (shuffle off: a sequence per row)
    seq = data("lstm", 8, seed=4)
    sopts = {"epochs": 2, "batch_size": 4, "shuffle": False, "progress": False}
    st = _compile("lstm", "numpy", "mpi", stateful=True)
    st.fit(seq, **sopts)
    half = _compile("lstm", "numpy", "mpi", stateful=True)
    half.fit(seq, checkpoint=f"{folder}/lstm_half.npz", checkpoint_every=1, **{**sopts, "epochs": 1})
    again = _compile("lstm", "numpy", "mpi", stateful=True)
    again.fit(seq, resume=f"{folder}/lstm_half.npz", **sopts)
    out["lstm_resume"] = comm.allreduce(_max_err(again.params, st.params), op=max_op())
    out["lstm_carry_resume"] = comm.allreduce(
        max(float(np.abs(a - b).max()) for a, b in zip(again.carries["lstm"], st.carries["lstm"])), op=max_op())
    if comm.rank == 0:
        ref = _compile("mlp", "numpy", None)
        h = ref.fit(train, **opts)
        out["mlp_params"] = _max_err(tr.params, ref.params)
        out["mlp_history"] = max(abs(a - b) for k in ("loss", "accuracy", "val_loss", "val_accuracy", "step_loss")
                                 for a, b in zip(hist[k], h[k]))
        out["mlp_history_keys"] = sorted(hist) == sorted(h)
        sref = _compile("lstm", "numpy", None, stateful=True)
        sref.fit(seq, **sopts)
        out["lstm_params"] = _max_err(st.params, sref.params)
    carry = st.carries["lstm"][0]
    gathered = comm.gather(np.array(carry), root=0)
    if comm.rank == 0:
        out["lstm_carry"] = float(np.abs(np.concatenate(gathered) - sref.carries["lstm"][0]).max())
    return out


def max_op():
    from mpi4py import MPI

    return MPI.MAX


def case_fail(comm) -> dict:
    """Rank 1 raises while rank 0 waits in a step: the job must end, with rank 1's message."""
    tr = _compile("mlp", "numpy", "mpi")
    if comm.rank == 1:
        raise RuntimeError("rank one broke on purpose")
    batch = data("mlp", 4)
    for _ in range(1000):
        tr.step(**batch)
    return {}


def case_mismatch(comm) -> dict:
    """The ranks compile different models: every rank stops at once, saying which."""
    _compile("mlp" if comm.rank == 0 else "lstm", "numpy", "mpi")
    return {}


def worker(case: str, out: str) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    found = {"steps": case_steps, "fail": case_fail, "mismatch": case_mismatch,
             "regularised": case_regularised}[case](comm) if case != "fit" else \
        case_fit(comm, os.path.dirname(out))
    if comm.rank == 0:
        pathlib.Path(out).write_text(json.dumps(found))


# -- the tests' side -------------------------------------------------------------------------

def _mpiexec() -> str | None:
    beside = pathlib.Path(sys.executable).parent / "mpiexec"  # the venv's, from the mpich wheel
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def launch(*args, ranks: int = 2, timeout: float = 600, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``args`` (after ``python``) on ``ranks`` processes; oversubscribing is fine."""
    exe = _mpiexec()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    return subprocess.run([exe, "-n", str(ranks), *extra, sys.executable, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **ENV, **(env or {})}, **kw)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
    sys.exit(0)

import pytest  # noqa: E402 - the ranks above never import pytest

pytest.importorskip("mpi4py", reason='needs mpi4py and an MPI: pip install -e ".[mpi]"')
if _mpiexec() is None:
    pytest.skip("no mpiexec on PATH", allow_module_level=True)


def _run_case(case: str, folder: pathlib.Path) -> dict:
    out = folder / f"{case}.json"
    res = launch(HERE, case, out)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    return _run_case("steps", tmp_path_factory.mktemp("mpi_steps"))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi_fit")
    return _run_case("fit", folder), folder


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("model", ["mlp", "lstm"])
@pytest.mark.parametrize("split", ["equal", "unequal"])
@pytest.mark.parametrize("how", ["allgather", "allreduce"])
def test_two_ranks_step_like_one_process_on_the_whole_batch(steps, backend, model, split, how):
    got = steps[f"{backend}-{model}-{split}-{how}"]
    assert got["params"] <= TOL and got["loss"] <= TOL, got
    assert got["identical"], "the ranks' parameters differ"


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_batchnorm_and_dropout_on_two_ranks(regularised_run, backend):
    got = regularised_run[backend]
    assert got["buffers"] <= TOL, got  # the example-weighted mean of the ranks' running statistics
    assert got["identical"], "the ranks' running statistics differ"
    assert got["masks"] > 1e-6, "both ranks drew the same dropout masks"


@pytest.fixture(scope="module")
def regularised_run(tmp_path_factory):
    return _run_case("regularised", tmp_path_factory.mktemp("mpi_regularised"))


def test_fit_on_two_ranks_like_one_process(fitted):
    got, _ = fitted
    assert got["mlp_history_keys"], got
    assert got["mlp_params"] <= TOL and got["mlp_history"] <= TOL, got
    assert got["mlp_identical"], got
    assert got["validated"] == [[6, 4], 3], got  # 2 epochs of 5 examples: 3 on rank 0, 2 on rank 1
    assert got["lstm_params"] <= TOL and got["lstm_carry"] <= TOL, got  # each rank carried its own rows


def test_resume_on_two_ranks(fitted):
    got, _ = fitted
    assert got["mlp_resume"] == 0.0 and got["lstm_resume"] == 0.0 and got["lstm_carry_resume"] == 0.0, got


def test_resume_with_another_rank_count_says_so(fitted):
    from codegen.runtime.trainer import DataError

    _, folder = fitted
    tr = _compile("mlp", "numpy", None)
    with pytest.raises(DataError, match="ranks=2, this run has ranks=1"):
        tr.fit(data("mlp", 11, seed=1), epochs=2, batch_size=5, validation=data("mlp", 5, seed=2), progress=False,
               seed=3, resume=folder / "mlp_half.npz")


def test_a_failing_rank_ends_the_job(tmp_path):
    start = time.monotonic()
    res = launch(HERE, "fail", tmp_path / "fail.json", timeout=120)
    assert res.returncode != 0
    assert "rank one broke on purpose" in res.stderr
    assert "[rank 1 of 2] failed" in res.stderr
    assert time.monotonic() - start < 120
    res = launch(HERE, "mismatch", tmp_path / "mismatch.json", timeout=120)
    assert res.returncode != 0
    assert "rank 1 compiled 'mpi_lstm' (float64) with other parameters or optimiser than rank 0's 'mpi_mlp'" \
        in res.stderr, res.stderr


def test_cli_and_package_train_under_mpiexec(tmp_path):
    import symbp as sb

    np.savez(tmp_path / "d.npz", **data("mlp", 12))
    model = tmp_path / "model.py"
    model.write_text("import symbp as sb\nm = sb.Model('mpi_mlp')\n"
                     "x, y = m.input('x', (5,)), m.input('y', (), dtype='int64')\n"
                     "m.minimize(sb.softmax_cross_entropy(x @ m.param('W', (5, 3)), y))\nmodel = m\n")
    cli = pathlib.Path(sys.executable).parent / "symbp"
    res = launch(cli, "train", model, "--data", tmp_path / "d.npz", "--mpi", "--quiet", "--epochs", "2",
                 "--out", tmp_path / "w.npz", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("trained 'mpi_mlp'") == 1, res.stdout  # rank 0 alone reports
    assert (tmp_path / "w.npz").exists()
    sb.build(sb.derive(mlp()), tmp_path / "pkg", name="mpi_pkg")
    res = launch("-m", "mpi_pkg", "train", tmp_path / "d.npz", "--mpi", "--quiet", "--out", tmp_path / "p.npz",
                 env={"PYTHONPATH": str(tmp_path / "pkg" / "src")}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("trained 1 epochs") == 1, res.stdout
    assert (tmp_path / "p.npz").exists()


def test_readme_script_runs_as_written(tmp_path):
    """The README's train.py under its `mpiexec -n 2 python train.py`."""
    readme = (HERE.parents[1] / "README.md").read_text()
    section = readme[readme.index("## More than one process"):]
    assert "mpiexec -n 2 python train.py" in section
    (tmp_path / "train.py").write_text(re.search(r"```py\n(.*?)```", section, re.S).group(1))
    res = launch("train.py", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ck.npz").exists()
    assert res.stderr.count("epoch 3/3") >= 1 and "[rank" not in res.stderr


def test_mpiexec_without_distributed_warns_once(monkeypatch):
    from codegen.runtime import distributed

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setattr(distributed, "_warned", False)
    import symbp as sb

    d = sb.derive(mlp())
    with pytest.warns(RuntimeWarning, match="every rank trains alone"):
        sb.compile(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb.compile(d)  # once


def test_distributed_asks_for_what_it_needs(monkeypatch):
    import symbp as sb

    d = sb.derive(mlp())
    with pytest.raises(sb.SymbpError, match="distributed must be None or 'mpi', got 'tcp'"):
        sb.compile(d, distributed="tcp")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ImportError, match=r'needs mpi4py and an MPI: pip install "symbp\[mpi\]"'):
        sb.compile(d, distributed="mpi")
