"""Weights files and checkpoints that do not fit, are damaged, or were cut short by a kill:
refused with the file's name before anything changes, and no temporary file left for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import DataError
from codegen.runtime.weights import write_npz

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clf():
    m = sb.Model("ckpt")
    x, y = m.input("x", (6,)), m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (6, 8)) + m.param("b1", (8,), init="zeros"))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (8, 3)), y))
    return sb.derive(m)


DATA = {"x": np.random.default_rng(1).normal(size=(40, 6)), "y": np.arange(40) % 3}


def trainer(d, optimizer):
    return sb.compile(d, optimizer=optimizer, dtype="float64", seed=0)


def snapshot(tr) -> dict:
    return {"params": {k: v.copy() for k, v in tr.params.items()}, "t": tr.t, "hyper": dict(tr.hyper),
            "state": {s: {k: v.copy() for k, v in t.items()} for s, t in tr.state.items()}}


def assert_unchanged(tr, before: dict) -> None:
    after = snapshot(tr)
    assert after["t"] == before["t"] and after["hyper"] == before["hyper"]
    for k, v in before["params"].items():
        np.testing.assert_array_equal(after["params"][k], v)
    for s, table in before["state"].items():
        for k, v in table.items():
            np.testing.assert_array_equal(after["state"][s][k], v)


def rewrite(path: Path, out: Path, meta=None, **arrays) -> Path:
    """A copy of weights file ``path`` with its metadata changed by ``meta`` and some arrays replaced."""
    with np.load(path) as f:
        content = {k: f[k] for k in f.files}
    info = json.loads(str(content["_meta"]))
    if meta is not None:
        meta(info)
    content["_meta"] = np.array(json.dumps(info))
    content.update(arrays)
    write_npz(out, content)
    return out


@pytest.mark.parametrize("old_format", [False, True], ids=["now", "without-optimiser-meta"])
@pytest.mark.parametrize("writer, reader", [("SGD", "Adam"), ("Adam", "SGD"), ("Momentum", "RMSprop")])
def test_a_checkpoint_resumes_only_with_the_optimiser_that_wrote_it(clf, tmp_path, writer, reader, old_format):
    ck = tmp_path / "ck.npz"
    trainer(clf, getattr(sb.optim, writer)()).fit(DATA, epochs=1, batch_size=8, checkpoint=ck, progress=False)
    if old_format:  # written before files named their optimiser: told apart by state slots and hyperparameters
        ck = rewrite(ck, tmp_path / "old.npz", meta=lambda m: [m.pop("slots"), m.pop("optimizer")])
    other = trainer(clf, getattr(sb.optim, reader)(lr=0.01))
    before = snapshot(other)
    with pytest.raises(DataError, match=rf"^{ck}: written by .*; this trainer's optimiser is {reader} .*"
                                        r"tr.load\(path, weights_only=True\)"):
        other.fit(DATA, epochs=2, batch_size=8, resume=ck, progress=False)
    with pytest.raises(DataError, match=f"^{ck}: written by"):
        other.load(ck)
    assert_unchanged(other, before)
    other.load(ck, weights_only=True)  # the way to go on from those weights with another optimiser
    with np.load(ck) as f:
        np.testing.assert_array_equal(other.params["W1"], f["W1"])
    assert other.t == 0 and other.hyper == before["hyper"]


def test_the_same_optimiser_still_resumes(clf, tmp_path):
    ck = tmp_path / "ck.npz"
    tr = trainer(clf, sb.optim.Adam(lr=0.02))
    tr.fit(DATA, epochs=1, batch_size=8, checkpoint=ck, progress=False)
    other = trainer(clf, sb.optim.Adam(lr=0.5))
    other.load(ck)
    assert other.t == tr.t == 5 and other.hyper["lr"] == 0.02
    np.testing.assert_array_equal(other.state["m"]["W1"], tr.state["m"]["W1"])


@pytest.mark.parametrize("change, arrays, message", [
    (None, {"state.m.W1": np.zeros((8, 6))}, r"optimiser state 'state.m.W1' has shape \(8, 6\); this model's is"),
    (None, {"state.v.b1": np.zeros((8, 2))}, r"optimiser state 'state.v.b1' has shape \(8, 2\)"),
    (None, {"state.m.W2": np.array(["a"] * 24).reshape(8, 3)}, "optimiser state 'state.m.W2' holds <U1 values"),
    (None, {"W2": np.zeros((3, 8))}, r"parameter 'W2' has shape \(3, 8\)"),
    (lambda m: m["hyper"].update(lr="fast"), {}, "hyperparameter lr is 'fast'; expected a finite non-negative"),
    (lambda m: m["hyper"].update(lr=-0.1), {}, "hyperparameter lr is -0.1"),
    (lambda m: m["hyper"].update(eps=float("nan")), {}, "hyperparameter eps is nan"),
    (lambda m: m["hyper"].update(beta2=1.5), {}, "hyperparameter beta2 is 1.5; .* below 1"),
    (lambda m: m.update(t="7"), {}, "the step count is '7'"),
    (lambda m: m.update(carries={"scan": "x"}), {}, "its list of carried states is damaged"),
])
def test_a_file_that_does_not_fit_is_refused_before_anything_changes(clf, tmp_path, change, arrays, message):
    tr = trainer(clf, sb.optim.Adam(lr=0.01))
    tr.fit(DATA, epochs=1, batch_size=8, progress=False)
    tr.save(tmp_path / "w.npz")
    bad = rewrite(tmp_path / "w.npz", tmp_path / "bad.npz", change, **arrays)
    other = trainer(clf, sb.optim.Adam(lr=0.01))
    other.step(**DATA)
    before = snapshot(other)
    with pytest.raises(DataError, match=f"^{bad}: {message}"):
        other.load(bad)
    assert_unchanged(other, before)
    assert np.isfinite(other.step(**DATA))


def test_a_bad_hyperparameter_set_on_the_optimiser_is_refused(clf):
    tr = trainer(clf, sb.optim.Adam(lr=0.01))
    with pytest.raises(sb.SymbpError, match="Adam: lr must be a finite non-negative number, got 'fast'"):
        tr.optimizer.lr = "fast"
    with pytest.raises(sb.SymbpError, match="beta1 must be below 1"):
        tr.optimizer.beta1 = 1.0
    assert tr.hyper["lr"] == 0.01 and np.isfinite(tr.step(**DATA))


def _truncated(raw: bytes) -> bytes:
    return raw[:len(raw) // 2]


def _flipped(raw: bytes) -> bytes:
    at = raw.find(b"W1.npy") + 300  # past the zip and .npy headers, inside W1's numbers
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


@pytest.mark.parametrize("damage, why", [
    (_truncated, "BadZipFile"),
    (_flipped, "BadZipFile: Bad CRC-32 for file 'W1.npy'"),
    (lambda raw: b"hello, not weights", "pickled Python objects or is no NumPy file at all"),
    ("objects", "pickled Python objects"),
    ("npy", r"holds a single array \(.npy\)"),
    ("meta", "JSONDecodeError"),
])
def test_damaged_files_are_named_in_the_error(clf, tmp_path, damage, why):
    tr = trainer(clf, sb.optim.SGD())
    tr.save(tmp_path / "w.npz")
    bad = tmp_path / "damaged.npz"
    if damage == "objects":
        np.savez(bad, W1=np.array([object()] * 48).reshape(6, 8))
    elif damage == "npy":
        np.save(tmp_path / "damaged.npy", np.zeros(3))
        bad = tmp_path / "damaged.npy"
    elif damage == "meta":
        write_npz(bad, {**dict(np.load(tmp_path / "w.npz")), "_meta": np.array("{not json")})
    else:
        bad.write_bytes(damage((tmp_path / "w.npz").read_bytes()))
    with pytest.raises(DataError, match=f"^{bad}: .*{why}") as e:
        tr.load(bad)
    assert "allow_pickle" not in str(e.value)  # numpy's hint to unpickle a file is not passed on
    with pytest.raises(DataError, match=f"^{bad}: "):
        tr.fit(DATA, epochs=1, resume=bad, progress=False)


def test_a_write_killed_midway_leaves_no_temporary_file_after_the_next_write(tmp_path):
    """A process killed while writing a checkpoint leaves its temporary file; the next write to
    the same path removes it (its writer is gone), and never one whose writer still runs."""
    ck = tmp_path / "ck.npz"
    script = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        from codegen.runtime import weights

        def hang(fd):
            print("writing", flush=True)
            time.sleep(600)

        weights.os.fsync = hang
        weights.write_npz({str(ck)!r}, {{"W": np.ones(1000)}})
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (left,) = tmp_path.glob("ck.npz.*.tmp")  # what the kill left behind
    assert left.name.startswith(f"ck.npz.{proc.pid}.")
    live = tmp_path / f"ck.npz.{os.getppid()}.abcd1234.tmp"  # another writer, still running
    live.write_bytes(b"partial")
    other = tmp_path / f"other.npz.{proc.pid}.abcd1234.tmp"  # a write to another file: not ours to judge
    other.write_bytes(b"partial")
    write_npz(ck, {"W": np.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.npz", live.name, other.name])
    np.testing.assert_array_equal(np.load(ck)["W"], np.zeros(3))


@pytest.mark.parametrize("value", ["fast", -1.0, float("inf"), None])
def test_a_bad_hyperparameter_in_the_live_dict_stops_the_step_naming_it(clf, value):
    tr = trainer(clf, sb.optim.Adam(lr=0.01))
    tr.hyper["lr"] = value
    before = snapshot(tr)
    with pytest.raises(DataError, match=f"^step\\(\\): hyperparameter lr is {value!r}"):
        tr.step(**DATA)
    with pytest.raises(DataError, match="hyperparameter lr"):
        tr.fit(DATA, epochs=1, progress=False)
    assert_unchanged(tr, before)
    tr.hyper["lr"] = np.float32(0.01)  # NumPy's numbers are numbers
    assert np.isfinite(tr.step(**DATA))
