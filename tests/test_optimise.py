"""The optimise pass (CSE, elementwise fusion) on graphs whose fused formulas simplify away."""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb

# Fusing a chain can simplify it to an existing node or a constant (log(exp(z)) is z, the
# derivative of log(exp(z)) is 1): the fused result then has no formula to splice further.
CASES = {
    "mean_log_exp": (lambda z: sb.mean(sb.log(sb.exp(z))), lambda z: np.mean(np.log(np.exp(z)))),
    "exp_log": (lambda z: sb.sum(sb.exp(sb.log(z * z + 0.1))), lambda z: np.sum(z * z + 0.1)),
    "sqrt_squared": (lambda z: sb.sum(sb.sqrt(z * z + 1) ** 2), lambda z: np.sum(z * z + 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fusion_that_simplifies_to_an_existing_node(case, rng):
    f, ref = CASES[case]
    m = sb.Model(case)
    x = m.input("x", (3,))
    m.minimize(f(x * m.param("P", (3,))))
    batch = {"x": rng.normal(size=(4, 3))}
    tr = sb.compile(sb.derive(m), dtype="float64")
    z = batch["x"] * tr.params["P"]
    np.testing.assert_allclose(tr.loss(**batch), ref(z), rtol=1e-12)
    assert sb.gradcheck(m, batch, tolerance=1e-7).ok
