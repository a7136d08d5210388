"""Labels are range-checked where a one-hot reads them, in the generated code of both backends:
also labels the runtime's input check cannot see (concatenated, or read inside a loop). The
error is the runtime's DataError and names the user's input; nothing runs on a bad label."""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import DataError

C = 4


def concatenated() -> sb.Model:
    """Labels from two inputs, concatenated before the one-hot."""
    m = sb.Model("labels_concat")
    x = m.input("x", (3,))
    a, b = m.input("a", (1,), dtype="int64"), m.input("b", (1,), dtype="int64")
    onehot = sb.onehot(sb.concat([a, b], axis=1), C)                       # (batch, 2, C)
    m.minimize(sb.mean(sb.sum(onehot, axis=1) * (x @ m.param("W", (3, C)))))
    return m


def in_a_loop() -> sb.Model:
    """Per-step labels scanned with the inputs, and labels the step captures."""
    m = sb.Model("labels_scan")
    s, ys = m.input("s", (5, 3)), m.input("ys", (5,), dtype="int64")
    first = m.input("first", (), dtype="int64")
    W = m.param("W", (3, C))

    def step(h, inputs):
        x_t, y_t = inputs
        z = x_t @ W + h
        return z, sb.sum((sb.onehot(y_t, C) + sb.onehot(first, C)) * z, axis=-1)

    _, out = sb.scan(step, (s, ys), sb.zeros((C,)))
    m.minimize(sb.mean(out))
    return m


def batch(model: str, rng, bad=None, where=None) -> dict:
    if model == "concatenated":
        data = {"x": rng.normal(size=(3, 3)), "a": rng.integers(0, C, (3, 1)), "b": rng.integers(0, C, (3, 1))}
        key, index = where or "b", (1, 0)
    else:
        data = {"s": rng.normal(size=(3, 5, 3)), "ys": rng.integers(0, C, (3, 5)), "first": rng.integers(0, C, 3)}
        key, index = where or "ys", ((2, 3) if (where or "ys") == "ys" else 1)
    if bad is not None:
        data[key][index] = bad
    return data


MODELS = {"concatenated": concatenated, "in_a_loop": in_a_loop}


@pytest.fixture(scope="module")
def trainers():
    out = {}
    for name, make in MODELS.items():
        d = sb.derive(make())
        for backend in ("numpy", "cython"):
            out[name, backend] = sb.compile(d, backend=backend, dtype="float64", seed=1,
                                            optimizer=sb.optim.Adam(lr=0.01))
    return out


@pytest.mark.parametrize("model", sorted(MODELS))
def test_backends_agree_on_good_labels(trainers, model, rng):
    data = batch(model, rng)
    ref, got = trainers[model, "numpy"], trainers[model, "cython"]
    np.testing.assert_allclose(got.loss(**data), ref.loss(**data), rtol=1e-12)
    for k, g in ref.gradients(**data).items():
        np.testing.assert_allclose(got.gradients(**data)[k], g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("bad", [-1, C, 2**40])
@pytest.mark.parametrize("model, where, named", [("concatenated", None, "inputs 'a', 'b'"),
                                                 ("in_a_loop", "ys", "input 'ys'"),
                                                 ("in_a_loop", "first", "input 'first'")])
def test_a_label_out_of_range_is_a_data_error_naming_the_input(trainers, backend, bad, model, where, named, rng):
    tr = trainers[model, backend]
    data = batch(model, rng, bad, where)
    before = {k: v.copy() for k, v in tr.params.items()}
    message = f"^{named}: label {bad} is outside 0..{C - 1}"
    for call in (tr.loss, tr.gradients, tr.step):
        with pytest.raises(DataError, match=message):
            call(**data)
    assert tr.t == 0  # the failed steps did not count
    for k, v in tr.params.items():
        np.testing.assert_array_equal(v, before[k])
    tr.step(**batch(model, rng))  # and the trainer still works
    assert tr.t == 1
    for k, v in before.items():  # as it was, for the other tests sharing it
        tr.params[k] = v
    tr.reset_optimizer()
