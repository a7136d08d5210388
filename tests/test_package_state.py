"""Standalone packages carry what the model's step needs beyond its weights (issues 11 and 12):
the seed of its random numbers (dropout), and a self-test whose random data the model accepts
(CTC labels without blanks, lengths in range, embedding ids within the table).

The NumPy packages are imported from their folders in-process (no install); the Cython package,
with BatchNorm and Dropout in one model, is installed and self-tested in a fresh venv.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import symbp as sb
from tests.test_package_install import c_compiler, sh, shell_env, venv  # noqa: F401 - venv: a fixture


def import_package(folder, name: str, monkeypatch):
    """The package built into ``folder``, imported from its sources (a fresh import each time)."""
    monkeypatch.syspath_prepend(str(folder / "src"))
    for k in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, k)
    return importlib.import_module(name), importlib.import_module(name + ".__main__")


def dropout_model(name: str) -> sb.Derivation:
    m = sb.Model(name)
    x = m.input("x", (4, 3))
    y = m.input("y", (), dtype="int64")
    h = sb.layers.LSTM(5, dropout=0.3, recurrent_dropout=0.3, return_sequences=False, name="rnn")(x)
    logits = sb.layers.Dense(3, name="out")(sb.layers.Dropout(0.4, name="drop")(h))
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


def test_a_package_draws_the_dropout_masks_of_its_seed(tmp_path, monkeypatch, rng):
    d, seed = dropout_model("pkg_dropout_seed"), 1234
    batch = {"x": rng.normal(size=(6, 4, 3)), "y": rng.integers(0, 3, 6)}
    opt = sb.optim.Adam(lr=0.05)
    sb.build(d, tmp_path / "pkg", optimizer=opt, dtype="float64", seed=seed)
    pkg, _ = import_package(tmp_path / "pkg", "pkg_dropout_seed", monkeypatch)
    ours, other = pkg.trainer(), pkg.trainer(seed=seed + 1)
    ref = sb.compile(d, optimizer=opt, dtype="float64", seed=seed)
    for _ in range(3):
        assert ours.step(**batch) == ref.step(**batch)
        other.step(**batch)
    for k in ref.params:
        np.testing.assert_array_equal(ours.params[k], ref.params[k], err_msg=k)
    assert any(not np.array_equal(other.params[k], ref.params[k]) for k in ref.params)  # the seed matters
    assert pkg.SEED == seed


def test_build_refuses_a_seed_it_cannot_write(tmp_path):
    for bad in (-1, 2**64, 1.5, True, "0; import os"):
        with pytest.raises(sb.SymbpError, match="seed must be an int"):
            sb.build(dropout_model("pkg_bad_seed"), tmp_path / "pkg", seed=bad)


def ctc_model(name: str, T: int, C: int, S: int) -> sb.Derivation:
    m = sb.Model(name)
    x = m.input("x", (T, C))
    labels = m.input("labels", (S,), dtype="int64")
    xl, yl = m.input("xl", (), dtype="int64"), m.input("yl", (), dtype="int64")
    logits = x @ m.param("W", (C, C), init="orthogonal") + m.param("b", (C,), init="zeros")
    m.minimize(sb.ctc_loss(logits, labels, xl, yl))
    return sb.derive(m)


def test_a_ctc_package_selftest_draws_labels_it_accepts(tmp_path, monkeypatch, capsys):
    # two classes: the only label is 1, so every label sequence repeats and needs blanks between
    sb.build(ctc_model("pkg_ctc", T=5, C=2, S=3), tmp_path / "pkg", dtype="float64")
    pkg, main = import_package(tmp_path / "pkg", "pkg_ctc", monkeypatch)
    for seed in range(5):
        data = main.random_batch(np.random.default_rng(seed), 8)
        assert np.all(data["labels"] == 1) and np.all((0 <= data["yl"]) & (data["yl"] <= 3))
        assert np.all((0 <= data["xl"]) & (data["xl"] <= 5)) and np.all(2 * data["yl"] - 1 <= data["xl"])
        assert pkg.trainer().loss(**data) < 1e3  # a possible alignment for every example
    assert main.selftest(), capsys.readouterr().out


def test_embedding_ids_span_the_table(tmp_path, monkeypatch):
    m = sb.Model("pkg_embed")
    ids, y = m.input("ids", (3,), dtype="int64"), m.input("y", (), dtype="int64")
    e = sb.layers.Embedding(7, 2, name="emb")(ids)
    m.minimize(sb.softmax_cross_entropy(sb.sum(e, 1) @ m.param("W", (2, 4)), y))
    sb.build(sb.derive(m), tmp_path / "pkg", dtype="float64")
    _, main = import_package(tmp_path / "pkg", "pkg_embed", monkeypatch)
    data = main.random_batch(np.random.default_rng(0), 64)
    assert data["ids"].min() == 0 and data["ids"].max() == 6 and data["y"].max() == 3
    assert main.selftest()


def bn_dropout_model(name: str) -> sb.Model:
    m = sb.Model(name)
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    h = sb.relu(sb.layers.BatchNorm(name="bn")(sb.layers.Dense(6, name="hid")(x)))
    logits = sb.layers.Dense(3, name="out")(sb.layers.Dropout(0.25, name="drop")(h))
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def test_a_gradient_zero_by_design_passes_the_finite_difference_check(rng):
    # the bias before a BatchNorm: the normalisation removes it, its gradient is 0 up to rounding,
    # and so is its finite difference, which the check used to divide by a floor of 1e-8
    result = sb.gradcheck(bn_dropout_model("bn_bias_gc"), {"x": rng.normal(size=(4, 5)), "y": rng.integers(0, 3, 4)})
    assert result.ok, str(result)


@pytest.mark.skipif(c_compiler() is None, reason="no C compiler to build the Cython package's extensions")
def test_cython_package_with_batchnorm_and_dropout_passes_its_selftest(venv, tmp_path):  # noqa: F811
    pkg = sb.build(sb.derive(bn_dropout_model("pkg_bn_drop")), tmp_path / "pkg", backend="cython", seed=5)
    env = shell_env(venv)
    sh("pip install -q .", pkg, env)  # as its README says: pip fetches Cython and NumPy to compile it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = sh("python -m pkg_bn_drop --selftest", elsewhere, env).stdout
    assert "selftest passed" in out and "running_" not in out, out
