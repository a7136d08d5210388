"""Random graphs: compositions of the registered ops drawn by hypothesis, derandomised (the same
examples on every run, so CI is reproducible) and bounded in time. For each graph, derived
gradients against central finite differences in float64, and the Cython backend against NumPy.

Elementwise ops whose domain is not every real get a guarded argument (log(softplus(a) + 0.5));
kinks (relu, abs, max) are left to the registry's own tests, where finite differences are
taken away from them. The count of examples each test ran is printed (pytest -s) and recorded
as properties in the JUnit XML (``fuzz_examples_*``), so a run that checks nothing shows.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz needs hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import symbp as sb  # noqa: E402

F = 4  # every value in the pool is (batch, F)
SEED = 20240610  # seeds parameter values and data; hypothesis itself is derandomised


def _guard(a):
    return sb.softplus(a) + 0.5  # > 0.5: a safe argument for log, sqrt, a divisor


UNARY = {
    "tanh": sb.tanh, "sigmoid": sb.sigmoid, "softplus": sb.softplus, "gelu": sb.gelu, "swish": sb.swish,
    "elu": sb.elu, "neg": lambda a: -a, "exp": lambda a: sb.exp(sb.tanh(a)), "expm1": lambda a: sb.expm1(sb.tanh(a)),
    "log": lambda a: sb.log(_guard(a)), "log1p": lambda a: sb.log1p(_guard(a)), "sqrt": lambda a: sb.sqrt(_guard(a)),
    "square": lambda a: a ** 2, "cube": lambda a: sb.tanh(a) ** 3, "softmax": sb.softmax, "log_softmax": sb.log_softmax,
    "center": lambda a: a - sb.mean(a, axis=-1, keepdims=True),
    "shift_max": lambda a: a - sb.max(a, axis=-1, keepdims=True),
    "logsumexp": lambda a: a + sb.logsumexp(a, axis=-1, keepdims=True),
}
BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / _guard(b), "scaled": lambda a, b: 0.5 * a + sb.tanh(b) * 2.0,
}
PRODUCTS = ("matmul", "matmul_t", "t_matmul", "concat_matmul")  # each reads a new weight matrix


def _product(kind: str, a, b, m, k: int):
    if kind == "matmul":
        return a @ m.param(f"W{k}", (F, F))
    if kind == "matmul_t":  # a transposed weight, folded into the product
        return a @ sb.transpose(m.param(f"W{k}", (F, F)))
    if kind == "t_matmul":  # the identity permutation, which must not fold
        return a @ sb.transpose(m.param(f"W{k}", (F, F)), (0, 1))
    return sb.concat([a, b], axis=-1) @ m.param(f"W{k}", (2 * F, F))


STEP = st.tuples(st.sampled_from(sorted(UNARY) + sorted(BINARY) + list(PRODUCTS)),
                 st.integers(0, 63), st.integers(0, 63))
GRAPHS = st.lists(STEP, min_size=1, max_size=6)


def build(steps) -> sb.Model:
    """A model over x (batch, F): a pool of values, each step applying one op to pool members
    (picked by index, modulo the pool's size); the loss sum((last + weighted others) * c)."""
    m = sb.Model("fuzz")
    x = m.input("x", (F,))
    pool = [sb.tanh(x * m.param("P", (F,))), x @ m.param("W0", (F, F))]
    for k, (op, i, j) in enumerate(steps, start=1):
        a, b = pool[i % len(pool)], pool[j % len(pool)]
        if op in UNARY:
            pool.append(UNARY[op](a))
        elif op in BINARY:
            pool.append(BINARY[op](a, b))
        else:
            pool.append(_product(op, a, b, m, k))
    total = pool[-1]
    for k, v in enumerate(pool[:-1]):  # every value reaches the loss, so every parameter does
        total = total + v * (0.5 / (k + 1))
    m.minimize(sb.sum(total * m.input("c", (F,))))
    return m


def data(n: int = 3) -> dict:
    rng = np.random.default_rng(SEED)
    return {"x": rng.normal(size=(n, F)), "c": rng.normal(size=(n, F))}


def params(m) -> dict:
    rng = np.random.default_rng(SEED + 1)
    return {k: rng.normal(0, 0.7, p.shape) for k, p in m.params.items()}


COUNTS: dict[str, int] = {}


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(GRAPHS)
def test_random_graph_gradients_match_finite_differences(steps):
    m = build(steps)
    tr = sb.compile(sb.derive(m), dtype="float64", params=params(m))
    batch = data()
    assert np.isfinite(tr.loss(**batch)), steps
    errors = tr.finite_difference_errors(batch, eps=1e-6, entries=32, rng=np.random.default_rng(SEED))
    assert max(errors.values()) < 1e-5, (steps, errors)
    COUNTS["gradients"] = COUNTS.get("gradients", 0) + 1


@settings(max_examples=12, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(GRAPHS)
def test_random_graph_cython_matches_numpy(steps):
    m = build(steps)
    d = sb.derive(m)
    batch = data(5)
    ref = sb.compile(d, dtype="float64", params=params(m))
    got = sb.compile(d, backend="cython", dtype="float64", params=params(m))
    np.testing.assert_allclose(got.loss(**batch), ref.loss(**batch), rtol=1e-11, err_msg=str(steps))
    want = ref.gradients(**batch)
    for k, g in got.gradients(**batch).items():
        np.testing.assert_allclose(g, want[k], rtol=1e-9, atol=1e-12, err_msg=f"{steps}: {k}")
    COUNTS["cython"] = COUNTS.get("cython", 0) + 1


def test_the_fuzz_ran(record_property):
    """The two property tests above ran their examples (they run first: file order)."""
    print(f"\nfuzz: {COUNTS} examples (hypothesis derandomised, data seed {SEED})")
    for k, v in COUNTS.items():
        record_property(f"fuzz_examples_{k}", v)
    assert COUNTS.get("gradients", 0) >= 50 and COUNTS.get("cython", 0) >= 10, COUNTS
