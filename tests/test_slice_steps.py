"""Slices with steps: generated code handles backward (negative-step) slices, checked by
finite differences; displays keep the step (inside recurrences too)."""

import numpy as np
import pytest

import symbp as sb
from symbp.ir import topo_order
from symbp.show.recurrences import format_scan_equations


@pytest.mark.parametrize("index", [np.s_[:, ::-1], np.s_[:, 3:0:-2], np.s_[:, ::-2, 1:], np.s_[:, 4::-3, ::-1]])
def test_negative_step_slices_match_finite_differences(index, rng):
    m = sb.Model("neg")
    x, y = m.input("x", (5, 3)), m.input("y", (5, 3))
    W = m.param("W", (3, 3))
    z = sb.tanh(x @ W)
    r = z[index]
    m.output("r", r)
    m.minimize(sb.mean(r * r) + sb.mean(z * y))
    batch = {"x": rng.normal(size=(2, 5, 3)), "y": rng.normal(size=(2, 5, 3))}
    result = sb.gradcheck(m, batch, tolerance=1e-6)
    assert result.ok, str(result)
    tr = sb.compile(sb.derive(m), dtype="float64")
    expected = np.tanh(batch["x"] @ tr.params["W"])[index]
    np.testing.assert_allclose(tr.predict(**batch)["r"], expected, atol=1e-12)


def test_recurrence_equations_show_the_step():
    m = sb.Model("m")
    s = m.input("s", (4, 6))
    W = m.param("W", (3, 3))
    hT, _ = sb.scan(lambda h, x: (sb.tanh(x[:, ::2] @ W + h[:, ::-1]), None), s, sb.zeros((3,)), label="enc")
    m.minimize(sb.mean(hT * hT))
    text = format_scan_equations(next(n for n in topo_order([m.loss]) if n.op == "scan"))
    assert "x_t[:, 0:6:2]" in text and "h_{t-1}[:, 2::-1]" in text, text


def test_ellipsis_indexes_the_trailing_axes(rng):
    m = sb.Model("ellipsis")
    x = m.input("x", (2, 6))
    w = m.param("w", (2, 6))
    z = (x * w)[..., 1:5:2]
    assert z.shape == (None, 2, 2)
    m.minimize(sb.mean(z ** 2) + sb.mean((x * w)[..., 0, :] ** 2))
    assert sb.gradcheck(m, {"x": rng.normal(size=(3, 2, 6))}).ok
