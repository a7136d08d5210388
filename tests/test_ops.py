"""Every registered op: its derivative against central finite differences in float64."""

import numpy as np
import pytest

import symbp as sb
from symbp.registry import OPS
from tests.helpers import op_model, op_names


@pytest.mark.parametrize("name", op_names())
def test_op_gradient_matches_finite_differences(name, rng):
    m, batch, params = op_model(name, rng)
    if not m.params:
        tr = sb.compile(sb.derive(m), dtype="float64")
        assert np.isfinite(tr.loss(**batch))
        return
    d = sb.derive(m)
    tr = sb.compile(d, dtype="float64", params=params)
    analytic = tr.gradients(**batch)
    if OPS[name].sample.get("blocks_gradient"):
        assert all(not g.any() for g in analytic.values())
        return
    for pname, g in analytic.items():
        p = tr.params[pname]
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + 1e-6
            up = tr.loss(**batch)
            p[i] = old - 1e-6
            down = tr.loss(**batch)
            p[i] = old
            num[i] = (up - down) / 2e-6
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8, err_msg=f"op {name}, parameter {pname}")
