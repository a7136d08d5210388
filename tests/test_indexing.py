"""Indexing follows the shape symbp reports, with NumPy's meaning (the batch axis leads and is
only ever ``:`` or ``...``): values against NumPy on concrete arrays and gradients against
finite differences, on both backends, in models and in scan steps; misuse names the tensor."""

import importlib.util

import numpy as np
import pytest

import symbp as sb

BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(importlib.util.find_spec("Cython") is None,
                                                                     reason="needs Cython"))]

# Per example shape -> indices as NumPy reads them on the batched array. One model per rank,
# an output per index, so each backend builds three modules, not one per index.
CASES = {
    (6,): [np.s_[:, 2:5], np.s_[:, -1], np.s_[..., ::2], np.s_[:, ::-1], np.s_[:, 4]],
    (4, 6): [np.s_[:, -1], np.s_[:, :, 0], np.s_[:, 2], np.s_[..., 1:5:2], np.s_[:, 1:3, ::-2], np.s_[:, 0, 3],
             np.s_[:, ...]],
    (3, 4, 5): [np.s_[:, 1:3, :, 2], np.s_[..., 0], np.s_[:, ::2, -1], np.s_[:, 2, 1:, ::-1], np.s_[:, :, :, 1:4],
                np.s_[::1, -2:, ..., 3]],
}


def _model(shape):
    m = sb.Model("ix" + "x".join(map(str, shape)))
    x = m.input("x", shape)
    w = m.param("w", shape, init="normal", std=1.0)
    z = sb.tanh(x * w)
    loss = None
    for k, index in enumerate(CASES[shape]):
        r = m.output(f"r{k}", z[index])
        # A different weight per slice, so a wrong gradient of one cannot cancel another's.
        term = sb.mean(r * r) * (k + 1) + sb.mean(sb.exp(r)) * 0.5
        loss = term if loss is None else loss + term
    m.minimize(loss)
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(CASES), ids=lambda s: f"{len(s) + 1}d")
def test_indexing_matches_numpy_values_and_finite_differences(shape, backend, rng):
    m = _model(shape)
    X = rng.normal(size=(3, *shape))
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64")
    out = tr.predict(x=X)
    Z = np.tanh(X * tr.params["w"])
    for k, index in enumerate(CASES[shape]):
        expected = Z[index]
        assert out[f"r{k}"].shape == expected.shape, (index, out[f"r{k}"].shape, expected.shape)
        np.testing.assert_allclose(out[f"r{k}"], expected, atol=1e-12, err_msg=str(index))
    result = sb.gradcheck(m, {"x": X}, tolerance=1e-6, max_entries=200, backend=backend)
    assert result.ok, str(result)


def test_the_reported_shape_is_the_indexed_shape():
    m = sb.Model("shapes")
    x, s = m.input("x", (64,)), m.input("s", (20, 8))
    assert x.shape == (None, 64) and x[:, 2:5].shape == (None, 3)
    assert s[:, -1].shape == (None, 8) and s[:, :, 0].shape == (None, 20) and s[:, 2].shape == (None, 8)
    assert s[..., 0].shape == (None, 20) and s[:, ...].shape == s.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_inside_a_scan_step_x_t_is_batch_by_features(backend, rng):
    """x_t has shape (None, F): x_t[:, 0] is feature 0 of the step, for every example."""
    T, F = 5, 3
    m = sb.Model("stepix")
    s = m.input("s", (T, F))
    a, b = m.param("a", (2,), init="normal", std=1.0), m.param("b", (2,), init="normal", std=1.0)

    def step(h, x_t):
        assert x_t.shape == (None, F)
        h = sb.tanh(x_t[:, 1:] * a + h * b)
        return h, x_t[:, 0] * h[:, -1]

    hT, ys = sb.scan(step, s, sb.zeros((2,)))
    m.output("ys", ys)
    m.minimize(sb.mean(ys * ys) + sb.mean(hT))
    S = rng.normal(size=(4, T, F))
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64")
    A, B = tr.params["a"], tr.params["b"]
    h, want = np.zeros((4, 2)), []
    for t in range(T):
        h = np.tanh(S[:, t, 1:] * A + h * B)
        want.append(S[:, t, 0] * h[:, -1])
    np.testing.assert_allclose(tr.predict(s=S)["ys"], np.stack(want, axis=1), atol=1e-12)
    assert sb.gradcheck(m, {"s": S}, tolerance=1e-6, backend=backend).ok


def test_equations_show_the_index_as_written():
    m = sb.Model("eq")
    x = m.input("x", (6,))
    W = m.param("W", (3, 2))
    m.minimize(sb.mean(sb.tanh(x[:, 2:5] @ W)))
    assert "x[:, 2:5]" in str(sb.derive(m).equations())


@pytest.mark.parametrize("index, text", [
    (np.s_[0], "got 0.*did you mean \\[:, 0\\]"),
    (np.s_[2:5], "got 2:5.*did you mean \\[:, 2:5\\]"),
    (np.s_[::2], "got ::2"),
    (np.s_[-1, 3], "got -1"),
    (np.s_[None], "got None"),
    (np.s_[1:, ...], "got 1:"),
])
def test_the_batch_axis_is_only_ever_whole(index, text):
    m = sb.Model("bad")
    x = m.input("x", (4, 6))
    with pytest.raises(sb.SymbpError, match=f"indexing input 'x' of shape \\(batch, 4, 6\\): axis 0 is the batch "
                                            f"axis, which can only be ':' or '...'.*{text}"):
        x[index]


def test_misuse_inside_a_step_names_the_step_tensor():
    m = sb.Model("badstep")
    s = m.input("s", (5, 3))
    with pytest.raises(sb.SymbpError, match="indexing the step's input x_t .*batch axis.*did you mean \\[:, 0\\]"):
        sb.scan(lambda h, x_t: (h + x_t[0], h), s, sb.zeros(()))
    with pytest.raises(sb.SymbpError, match="indexing the step's carry .*batch axis"):
        sb.scan(lambda h, x_t: (h + x_t[:, :2] + h[1:], h), s, sb.zeros((2,)))


@pytest.mark.parametrize("index, text", [
    (np.s_[:, 6], "index 6 is not valid for an axis of size 6 \\(axis 1\\)"),
    (np.s_[:, 0, 0], "too many indices \\(3\\)"),
    (np.s_[..., 0, ...], "only one '...'"),
    (np.s_[:, True], "index True is not valid"),
    (np.s_[:, 1.5], "index 1.5 is not valid"),
])
def test_bad_indices_name_the_tensor(index, text):
    m = sb.Model("bad")
    x = m.input("x", (6,))
    with pytest.raises(sb.SymbpError, match=f"indexing input 'x'.*{text}"):
        x[index]


def test_numpy_integers_index_like_ints():
    m = sb.Model("npint")
    x = m.input("x", (4, 6))
    assert x[:, np.int64(2), np.int32(-1)].shape == (None,)
