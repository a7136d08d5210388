"""The training loop: history, accuracy rule, exact resume, atomic checkpoints, NaN stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import codegen
import symbp as sb
from codegen import runtime
from codegen.runtime import training
from codegen.runtime.trainer import DataError, NonFiniteLoss


def classifier() -> sb.Derivation:
    m = sb.Model("clf")
    x = m.input("x", (6,))
    y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (6, 8)) + m.param("b1", (8,), init="zeros"))
    logits = h @ m.param("W2", (8, 3))
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


def regressor() -> sb.Derivation:
    m = sb.Model("reg")
    x = m.input("x", (3,))
    t = m.input("t", (1,))
    out = x @ m.param("W", (3, 1))
    m.output("pred", out)
    m.minimize(sb.mse(out, t))
    return sb.derive(m)


@pytest.fixture(scope="module")
def clf():
    return classifier()


def data(n=50, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}


def trainer(d, dtype="float64", lr=0.05):
    return sb.compile(d, optimizer=sb.optim.Adam(lr=lr), dtype=dtype, seed=0)


def test_fit_history_and_learning(clf):
    tr = trainer(clf)
    hist = tr.fit(data(), epochs=4, batch_size=8, validation=data(20, seed=2), progress=False)
    assert hist["epoch"] == [1, 2, 3, 4]
    assert hist["step"] == [7, 14, 21, 28] and tr.t == 28
    assert set(hist) == {"epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "step_loss"}
    assert len(hist["step_loss"]) == 28
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["loss"][0] == pytest.approx(np.mean(hist["step_loss"][:7]))
    # the validation numbers are what evaluate() reports
    assert hist["val_loss"][-1] == pytest.approx(tr.evaluate(data(20, seed=2))["loss"])
    assert 0 <= hist["val_accuracy"][-1] <= 1


def test_accuracy_rule():
    # classification: one int64 label input of shape (batch,) and an output (batch, C)
    assert training.accuracy_pair(trainer(classifier())) == ("probs", "y")
    # regression: no labels, so no accuracy
    tr = trainer(regressor())
    assert training.accuracy_pair(tr) is None
    rng = np.random.default_rng(0)
    hist = tr.fit({"x": rng.normal(size=(30, 3)), "t": rng.normal(size=(30, 1))}, epochs=1, batch_size=10,
                  progress=False)
    assert "accuracy" not in hist


def test_evaluate_accuracy_counts_argmax(clf):
    tr = trainer(clf)
    d = data(30)
    probs = tr.predict(x=d["x"])["probs"]
    assert tr.evaluate(d, batch_size=7)["accuracy"] == pytest.approx(float((probs.argmax(1) == d["y"]).mean()))


def test_progress_falls_back_to_lines_without_tqdm(clf, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    trainer(clf).fit(data(), epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2  loss " in err and "epoch 2/2  loss " in err and "accuracy" in err


def _interrupt_after(tr, k):
    """Make the k+1-th step raise KeyboardInterrupt, as if the run was stopped there."""
    real, calls = tr._step, [0]

    def step(batch):
        calls[0] += 1
        if calls[0] > k:
            raise KeyboardInterrupt
        return real(batch)

    tr._step = step


def test_interrupted_and_resumed_equals_uninterrupted(clf, tmp_path):
    kw = dict(epochs=3, batch_size=8, validation=data(20, seed=2), seed=5, progress=False)
    full = trainer(clf)
    hist_full = full.fit(data(), **kw)
    ck = tmp_path / "ck.npz"
    first = trainer(clf)
    _interrupt_after(first, 11)  # epoch 2, mid-way: the last checkpoint is after step 10
    with pytest.raises(KeyboardInterrupt):
        first.fit(data(), checkpoint=ck, checkpoint_every=5, **kw)
    resumed = trainer(clf, lr=0.5)  # the checkpoint's hyperparameters win
    resumed.params["W1"] = np.zeros((6, 8))
    hist = resumed.fit(data(), checkpoint=ck, checkpoint_every=5, resume=ck, **kw)
    assert hist == hist_full  # bit for bit: same floats, same lists
    assert resumed.t == full.t == 21
    for k in full.params:
        np.testing.assert_array_equal(resumed.params[k], full.params[k])
    for slot in full.state:
        for k in full.state[slot]:
            np.testing.assert_array_equal(resumed.state[slot][k], full.state[slot][k])


def test_resume_refuses_different_settings(clf, tmp_path):
    ck = tmp_path / "ck.npz"
    trainer(clf).fit(data(), epochs=1, batch_size=8, checkpoint=ck, progress=False)
    with pytest.raises(DataError, match="batch_size=8"):
        trainer(clf).fit(data(), epochs=2, batch_size=16, resume=ck, progress=False)
    tr = trainer(clf)
    tr.save(tmp_path / "w.npz")
    with pytest.raises(DataError, match="no training-loop state"):
        trainer(clf).fit(data(), epochs=2, resume=tmp_path / "w.npz", progress=False)


def test_save_load_weights_and_optimiser_state(clf, tmp_path):
    tr = trainer(clf)
    tr.fit(data(), epochs=1, batch_size=8, progress=False)
    tr.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:  # plain names, readable without symbp
        np.testing.assert_array_equal(f["W1"], tr.params["W1"])
        assert "state.m.W1" in f.files
    other = trainer(clf)
    other.load(tmp_path / "w.npz")
    assert other.t == tr.t
    d = data(10, seed=3)
    assert other.step(**d) == tr.step(**d)
    np.testing.assert_array_equal(other.params["W2"], tr.params["W2"])
    np.savez(tmp_path / "bad.npz", W1=np.zeros((6, 8)))
    with pytest.raises(DataError, match="missing parameter.*'b1'"):
        other.load(tmp_path / "bad.npz")


def test_nonfinite_loss_stops_with_step_number(clf, tmp_path):
    d = data(40)
    d["x"][25, 0] = np.nan  # shuffle off, batches of 10: the 3rd step sees it
    tr = trainer(clf)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, batch 3 of 4: step 3: the loss is nan") as e:
        tr.fit(d, epochs=2, batch_size=10, shuffle=False, checkpoint=tmp_path / "ck.npz", checkpoint_every=2,
               progress=False)
    assert "The last checkpoint, after step 2, is in" in str(e.value)
    assert tr.t == 2


def test_checkpoint_write_failing_halfway_keeps_previous(clf, tmp_path, monkeypatch):
    ck = tmp_path / "ck.npz"
    tr = trainer(clf)
    tr.fit(data(), epochs=1, batch_size=8, checkpoint=ck, progress=False)
    before = {k: v.copy() for k, v in tr.params.items()}

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(runtime.trainer.np, "savez", broken_savez)
    tr.fit(data(), epochs=1, batch_size=8, progress=False)  # moves the weights on
    with pytest.raises(OSError, match="disk full"):
        tr.save(ck)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]  # no temporary file left
    fresh = trainer(clf)
    meta = fresh.load(ck)
    assert meta["t"] == 7 and meta["fit"]["epoch"] == 1
    for k in before:
        np.testing.assert_array_equal(fresh.params[k], before[k])


def test_checkpoint_killed_mid_write_leaves_a_loadable_file(tmp_path):
    """A process saving big checkpoints in a loop is SIGKILLed; the file must still load."""
    m = sb.Model("big")
    x = m.input("x", (400,))
    m.minimize(sb.mean(x @ m.param("W", (400, 1000))))
    d = sb.derive(m)
    src = codegen.emit(codegen.Spec(d, sb.optim.SGD(), "float64"))
    (tmp_path / "kernels.py").write_text(src)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        import kernels
        from codegen.runtime.trainer import Trainer
        tr = Trainer(kernels, {{"W": np.zeros((400, 1000))}})
        i = 0
        while True:
            i += 1
            tr.params["W"] = np.full((400, 1000), float(i))
            tr.t = i
            tr.save({str(tmp_path / "ck.npz")!r})
            if i == 1:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.4)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    tr = runtime.Trainer(codegen.load(src, "numpy", "big"), {"W": np.zeros((400, 1000))})
    meta = tr.load(tmp_path / "ck.npz")
    assert meta["t"] >= 1
    assert np.all(tr.params["W"] == meta["t"])  # a whole file: the weights match its own step count


def test_plot_history(clf, tmp_path):
    pytest.importorskip("matplotlib")
    hist = trainer(clf).fit(data(), epochs=2, batch_size=8, validation=data(10, 2), progress=False)
    runtime.plot_history(hist, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
