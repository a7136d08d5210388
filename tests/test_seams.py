"""Where the merged features meet: BatchNorm, dropout and a stateful recurrence with recurrent
dropout in one model, through predict's own modules (``outputs=``), models without a loss, the
warm-start cache key, checkpoints and packages."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import symbp as sb
from codegen.runtime import DataError

BACKENDS = ["numpy", "cython"]


def combo(loss: bool = True, rate: float = 0.2, recurrent: float = 0.3, momentum: float = 0.1,
          eps: float = 1e-5) -> sb.Derivation:
    """A stateful LSTM with input and recurrent dropout, Dense, BatchNorm, Dropout, Dense;
    outputs ``logits`` and ``h`` (the LSTM's last state); a class loss unless ``loss`` is False."""
    m = sb.Model("seams")
    x = m.input("x", (4, 3))
    y = m.input("y", (), dtype="int64")
    h = sb.layers.LSTM(5, return_sequences=False, stateful=True, name="lstm", dropout=rate,
                       recurrent_dropout=recurrent)(m, x)
    z = sb.layers.BatchNorm(momentum=momentum, eps=eps, name="bn")(m, sb.layers.Dense(6, name="d1")(m, h))
    logits = sb.layers.Dense(3, name="d2")(m, sb.layers.Dropout(rate, name="drop")(m, sb.tanh(z)))
    m.output("logits", logits)
    m.output("h", h)
    if loss:
        m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


@functools.cache
def trainer(backend: str, loss: bool = True):
    """One compiled float64 trainer per (backend, loss): compiling Cython costs seconds."""
    return sb.compile(combo(loss), backend=backend, dtype="float64", optimizer=sb.optim.Adam(lr=1e-2), seed=3)


def data(rng, n: int = 6) -> dict:
    return {"x": rng.standard_normal((n, 4, 3)), "y": rng.integers(0, 3, n)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_outputs_and_a_model_without_a_loss_read_the_running_statistics(backend, rng):
    """predict(outputs=) and a loss-free model compile a module without a step, with BatchNorm's
    buffers in it (seen failing: building their constants read the missing loss), and compute
    what the full predict does: running statistics, no dropout, predict's own state."""
    tr, batch = trainer(backend), data(rng)
    for _ in range(2):
        tr.step(**batch)
    tr.reset_state()
    first, second = tr.predict(x=batch["x"]), tr.predict(x=batch["x"])
    tr.reset_state()
    np.testing.assert_array_equal(tr.predict(x=batch["x"], outputs=["logits"])["logits"], first["logits"])
    np.testing.assert_array_equal(tr.predict(x=batch["x"], outputs=["h"])["h"], second["h"])
    tr.reset_state()
    np.testing.assert_array_equal(tr.predict(x=batch["x"][:2])["logits"], first["logits"][:2])  # no batch statistics

    inference = trainer(backend, loss=False)
    inference.params.update(tr.params)
    inference.buffers.update(tr.buffers)
    inference.reset_state()
    np.testing.assert_allclose(inference.predict(x=batch["x"])["logits"], first["logits"], rtol=1e-12)
    np.testing.assert_allclose(inference.predict(x=batch["x"], outputs=["h"])["h"], second["h"], rtol=1e-12)


def test_explain_of_a_model_without_a_loss_costs_its_predict():
    """A model without a loss compiles predict alone, in inference mode: explain counts no
    dropout, no batch statistics and no backward pass (seen failing: it read the outputs in
    training mode and titled the table a training step saving residuals)."""
    d = combo(loss=False)
    data = d.explain(batch=16).data
    assert data["flops"]["backward"] == data["flops"]["update"] == 0 and data["loops"] == []
    assert not [o for o in data["costliest"] if "drop" in o["what"] or o["op"] in ("dropout_mask", "batch_stat")]
    assert data["flops"]["forward"] < combo().explain(batch=16).data["flops"]["forward"]
    text = str(d.explain(batch=16))
    assert "predict" in text.splitlines()[0] and "training step" not in text and "backward pass" not in text


def _key(d: sb.Derivation) -> str:
    import codegen
    from codegen.cython.cache import graph_key

    return graph_key(codegen.Spec(d, sb.optim.Adam(lr=1e-2), "float64"))


def test_the_warm_start_key_misses_on_every_change_of_the_code_and_hits_across_processes(monkeypatch):
    """A wrong hit of the Cython cache is silently wrong code: every option that changes the
    generated module changes the key, and the same model gives the same key in a new process
    (node ids differ there: a key reading ids or addresses would never hit)."""
    import subprocess
    import sys
    from pathlib import Path

    base = _key(combo())
    keys = {"base": base, "dropout rate": _key(combo(rate=0.25)), "recurrent dropout": _key(combo(recurrent=0.1)),
            "momentum": _key(combo(momentum=0.2)), "eps": _key(combo(eps=1e-3)), "no loss": _key(combo(loss=False)),
            "outputs": _key(combo().for_outputs(["logits"])), "no dropout": _key(combo(rate=0.0, recurrent=0.0))}
    traced = combo()  # SYMBP_HOIST is read when the step is traced and again when its loops are emitted
    monkeypatch.setenv("SYMBP_HOIST", "0")
    keys["no hoisting"], keys["no hoisting when emitted"] = _key(combo()), _key(traced)
    monkeypatch.delenv("SYMBP_HOIST")
    assert len(set(keys.values())) == len(keys), keys
    assert _key(combo(loss=False).for_outputs(["logits"])) == keys["outputs"]  # the same predict-only module
    code = ("import sys; sys.path.insert(0, 'tests'); import test_seams as t; print(t._key(t.combo()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == base == _key(combo())  # here built after many models: other node ids


def test_gradcheck_passes_a_bias_that_batchnorm_cancels(rng):
    """A Dense bias before BatchNorm has a zero gradient (the batch mean removes it), so its
    finite differences are the loss's rounding alone: gradcheck must not judge that noise
    (seen failing: 1e-3 against the 1e-8 floor for one rounding step of the loss)."""
    tr = sb.compile(combo(), dtype="float64", seed=3)
    errors = tr.finite_difference_errors(data(rng, 8))
    assert max(errors.values()) < 1e-5, errors


def test_a_model_without_a_loss_loads_a_training_checkpoint(tmp_path, rng):
    """The weights a training run saved (Adam state, step count, carries) load into the same
    model compiled without a loss, which has no optimiser to resume: its weights and running
    statistics (seen failing: refused as written by another optimiser)."""
    tr, batch = sb.compile(combo(), dtype="float64", optimizer=sb.optim.Adam(lr=1e-2), seed=3), data(rng)
    for _ in range(2):
        tr.step(**batch)
    tr.save(tmp_path / "w.npz")
    inference = sb.compile(combo(loss=False), dtype="float64")
    inference.load(tmp_path / "w.npz")
    tr.reset_state()
    np.testing.assert_array_equal(inference.predict(x=batch["x"])["logits"], tr.predict(x=batch["x"])["logits"])


def test_fit_refuses_up_front_a_last_batch_of_one_example_that_batchnorm_cannot_take(rng):
    """25 examples in batches of 8 leave a last batch of one, which BatchNorm's step refuses:
    fit says so before training, naming the layer (seen failing: the epoch died at its 4th step)."""
    tr = sb.compile(combo(), dtype="float64", seed=3)
    batches = data(rng, 25)
    with pytest.raises(DataError, match=r"layer 'bn' .* 25 examples in batches of 8 .* batch of 1 example"):
        tr.fit(batches, epochs=1, batch_size=8, progress=False)
    assert tr.t == 0
    history = tr.fit({k: v[:24] for k, v in batches.items()}, epochs=1, batch_size=8, progress=False)
    assert len(history["step_loss"]) == 3
