"""Checks that can fail: gradcheck (and the runtime's finite-difference errors it reads) on
deliberately broken gradients. A NaN or Inf is a failure, never "ok" (max() and <= skip NaN)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import Trainer


def mlp() -> sb.Model:
    m = sb.Model("checked")
    x = m.input("x", (4,))
    h = sb.tanh(x @ m.param("W1", (4, 6)) + m.param("b1", (6,), init="zeros"))
    m.minimize(sb.mean(sb.sum(h @ m.param("W2", (6, 2)), axis=-1) ** 2))
    return m


BATCH = {"x": np.random.default_rng(0).normal(size=(5, 4))}


def broken(how: str, name: str = "W1", entry: int = 0):
    """A Trainer.gradients whose gradient of ``name`` is wrong at ``entry`` (or scaled)."""
    real = Trainer.gradients

    def gradients(self, **batch):
        grads = real(self, **batch)
        g = grads[name]
        if how == "scaled":
            g *= 1.01
        else:
            g.flat[entry] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[how]
        return grads

    return gradients


def test_gradcheck_passes_on_the_derived_gradients():
    result = sb.gradcheck(mlp(), BATCH)
    assert result.ok and all(math.isfinite(e) for e in result.errors.values())


@pytest.mark.parametrize("how", ["scaled", "nan", "inf", "-inf"])
def test_gradcheck_fails_on_a_broken_gradient(monkeypatch, how):
    monkeypatch.setattr(Trainer, "gradients", broken(how))
    result = sb.gradcheck(mlp(), BATCH)
    assert not result.ok and not result
    assert result.errors["W1"] > result.tolerance  # inf for NaN/Inf, never NaN
    assert all(e <= result.tolerance for k, e in result.errors.items() if k != "W1")
    assert "W1" in str(result) and "FAIL" in str(result).split("W1")[1].splitlines()[0]


def test_gradcheck_fails_on_a_nan_in_an_entry_it_does_not_sample(monkeypatch):
    """24 entries, 2 sampled: the NaN is found wherever it is."""
    monkeypatch.setattr(Trainer, "gradients", broken("nan", entry=23))
    result = sb.gradcheck(mlp(), BATCH, max_entries=2)
    assert not result.ok and result.errors["W1"] == math.inf


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")  # wanted here
def test_gradcheck_fails_when_the_loss_is_not_finite():
    """sqrt of a negative: the loss and its finite differences are NaN."""
    m = sb.Model("nan_loss")
    x = m.input("x", (3,))
    m.minimize(sb.sum(sb.sqrt(x * m.param("p", (3,), init="ones"))))
    result = sb.gradcheck(m, {"x": -np.ones((2, 3))})
    assert not result.ok and result.errors["p"] == math.inf


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_finite_difference_errors_report_inf_not_nan(monkeypatch, backend):
    """The runtime's check, as the standalone packages' --selftest calls it."""
    tr = sb.compile(sb.derive(mlp()), backend=backend, dtype="float64")
    assert max(tr.finite_difference_errors(BATCH).values()) < 1e-6
    monkeypatch.setattr(Trainer, "gradients", broken("nan", "b1", 2))
    errors = tr.finite_difference_errors(BATCH)
    assert errors["b1"] == math.inf and errors["W1"] < 1e-6
