"""Derivation and code generation of whole models: gradients, fusion, determinism."""

import numpy as np
import pytest
import sympy

import symbp as sb
from symbp.autodiff.optimise import optimise
from symbp.ir import topo_order


def mlp(hidden=16, activation=sb.tanh):
    m = sb.Model("mlp")
    x = m.input("x", (8,))
    y = m.input("y", (), dtype="int64")
    W1 = m.param("W1", (8, hidden))
    b1 = m.param("b1", (hidden,), init="normal", std=0.1)
    h = activation(x @ W1 + b1)
    logits = h @ m.param("W2", (hidden, 5)) + m.param("b2", (5,), init="normal", std=0.1)
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def data(rng, n=6):
    return {"x": rng.normal(size=(n, 8)), "y": rng.integers(0, 5, n)}


@pytest.mark.parametrize("act", [sb.tanh, sb.sigmoid, sb.relu, sb.gelu, sb.elu, sb.swish, sb.softplus])
def test_mlp_gradients_match_finite_differences(act, rng):
    result = sb.gradcheck(mlp(activation=act), data(rng), tolerance=1e-6)
    assert result.ok, str(result)


def test_gradcheck_reports_per_parameter(rng):
    result = sb.gradcheck(mlp(), data(rng))
    assert set(result.errors) == {"W1", "b1", "W2", "b2"}
    assert "W1" in str(result) and result


def test_node_used_twice_accumulates(rng):
    m = sb.Model("twice")
    x = m.input("x", (3,))
    W = m.param("W", (3, 3))
    h = x @ W
    m.minimize(sb.mean(h * h + sb.tanh(h) * h))
    assert sb.gradcheck(m, {"x": rng.normal(size=(4, 3))}).ok


def test_bias_broadcast_gradient_is_summed_over_batch(rng):
    m = sb.Model("bias")
    x = m.input("x", (3,))
    b = m.param("b", (3,), init="zeros")
    m.minimize(sb.sum(x + b))
    tr = sb.compile(sb.derive(m), dtype="float64")
    np.testing.assert_array_equal(tr.gradients(x=rng.normal(size=(7, 3)))["b"], np.full(3, 7.0))


def test_probability_targets_equal_integer_labels(rng):
    logits_p = rng.normal(size=(6, 5))
    y = rng.integers(0, 5, 6)
    out = []
    for kind in ("int64", "float"):
        m = sb.Model("xent")
        z = m.input("z", (5,))
        W = m.param("W", (5, 5), init="constant", value=0.0)
        lab = m.input("y", () if kind == "int64" else (5,), dtype=kind)
        m.minimize(sb.softmax_cross_entropy(z + z @ W, lab))
        tr = sb.compile(sb.derive(m), dtype="float64")
        out.append(tr.loss(z=logits_p, y=y if kind == "int64" else np.eye(5)[y]))
    assert out[0] == pytest.approx(out[1], rel=1e-12)


def test_stable_forms_do_not_overflow():
    m = sb.Model("stable")
    z = m.input("z", (3,))
    t = m.input("t", (3,))
    s = m.param("s", (), init="ones")
    m.minimize(sb.binary_cross_entropy_with_logits(z * s, t) + sb.softmax_cross_entropy(z * s, t)
               + sb.mean(sb.logsumexp(z * s)) * 0.0 + sb.mean(sb.softplus(z * s)))
    tr = sb.compile(sb.derive(m), dtype="float32")
    big = np.array([[1e4, -1e4, 80.0]], dtype=np.float32)
    t = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert np.isfinite(tr.loss(z=big, t=t))
    assert all(np.isfinite(g).all() for g in tr.gradients(z=big, t=t).values())


def test_fusion_makes_one_kernel_of_an_elementwise_chain():
    m = sb.Model("chain")
    x = m.input("x", (4,))
    W = m.param("W", (4, 4))
    m.minimize(sb.mean(sb.exp(sb.tanh(x @ W + 1.0) * 2.0 - 0.5)))
    d = sb.derive(m)
    fused = optimise([d.loss])
    ew = [n for n in topo_order(fused) if "expr" in n.attrs and n.shape == (None, 4)]
    assert len(ew) == 1
    assert ew[0].attrs["expr"].has(sympy.tanh) and ew[0].attrs["expr"].has(sympy.exp)


def test_relu_mask_reads_the_output_so_bias_and_relu_fuse():
    """ReLU's derivative in output form, 1[relu(z) > 0]: z = xW + b is read by the ReLU alone
    and fuses into it; gradients stay exact where z is exactly 0."""
    m = sb.Model("relu")
    x = m.input("x", (3,))
    W, b = m.param("W", (3, 4)), m.param("b", (4,))
    m.minimize(sb.sum(sb.relu(x @ W + b) * sb.relu(x @ W + b)))
    d = sb.derive(m)
    roots = optimise([d.loss, *d.grads.values()])
    prod = [n for n in topo_order(roots) if n.op == "dot" and n.shape == (None, 4)]
    readers = [n for n in topo_order(roots) if prod[0] in n.inputs]
    assert len(prod) == 1 and len(readers) == 1 and readers[0].attrs["expr"].has(sb.ops.scalar.relu)
    P = {"W": np.array([[1.0, -1, 0, 2], [0.5, 1, 0, -1], [0, 0, 0, 1]]), "b": np.array([0.0, 0, 0, -0.5])}
    X = np.array([[1.0, 1, 0], [0, 0, 0], [-1, 2, 0.5]])  # row 1 and column 2 give z == 0
    g = sb.compile(d, backend="numpy", dtype="float64", params=P).gradients(x=X)
    z = X @ P["W"] + P["b"]
    dz = 2 * np.maximum(z, 0) * (z > 0)
    np.testing.assert_allclose(g["W"], X.T @ dz, rtol=1e-12)
    np.testing.assert_allclose(g["b"], dz.sum(0), rtol=1e-12)


def test_generated_code_is_deterministic():
    sources = {sb.compile(sb.derive(mlp()), optimizer=sb.optim.Adam()).source for _ in range(3)}
    assert len(sources) == 1


def test_unnamed_layers_get_the_same_names_every_build():
    def build():
        m = sb.Model("auto")
        h = sb.layers.Dense(5, activation="relu")(m, m.input("x", (4,)))
        m.minimize(sb.mean(sb.layers.Dense(1)(m, h)))
        return m

    first, second = build(), build()
    assert list(first.params) == list(second.params) == ["dense1_W", "dense1_b", "dense2_W", "dense2_b"]
    assert sb.compile(sb.derive(first)).source == sb.compile(sb.derive(second)).source


def test_sigmoid_keeps_its_tails():
    m = sb.Model("tails")
    z = m.input("z", ())
    s = m.param("s", (), init="ones")
    m.minimize(sb.mean(-sb.log(sb.sigmoid(z * s))))
    tr = sb.compile(sb.derive(m), dtype="float64")
    assert tr.loss(z=np.array([-40.0])) == pytest.approx(40.0, rel=1e-12)
    assert tr.gradients(z=np.array([-40.0]))["s"] == pytest.approx(40.0, rel=1e-12)


def test_float32_agrees_with_float64(rng):
    batch = data(rng)
    losses = [sb.compile(sb.derive(mlp()), dtype=dt, seed=3).loss(**batch) for dt in ("float32", "float64")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_deep_graph_has_no_recursion_limit(rng):
    m = sb.Model("deep")
    x = m.input("x", (2,))
    W = m.param("W", (2, 2), init="orthogonal")
    h = x
    for _ in range(1500):  # past Python's recursion limit if any pass recursed
        h = h @ W * 1.0 + h * 0.0
    m.minimize(sb.mean(h))
    tr = sb.compile(sb.derive(m), dtype="float64")
    assert np.isfinite(tr.loss(x=rng.normal(size=(2, 2))))


def test_slicing_concat_and_reductions(rng):
    m = sb.Model("shapes")
    x = m.input("x", (6,))
    W = m.param("W", (6, 6))
    h = x @ W
    a, b = h[:, :3], h[:, 3:]
    z = sb.concat([sb.maximum(a, b), sb.minimum(a, b), h[:, 1:5:2]], axis=-1)
    z = sb.where(z > 0.1, z, 0.5 * z) + sb.max(h, axis=-1, keepdims=True) - sb.mean(h, axis=-1, keepdims=True)
    m.minimize(sb.mean(sb.reshape(z, (4, 2)) ** 2) + sb.mean(h.T @ h) * 0.01)
    assert sb.gradcheck(m, {"x": rng.normal(size=(5, 6))}).ok


def test_training_reduces_the_loss(rng):
    tr = sb.compile(sb.derive(mlp()), optimizer=sb.optim.Adam(lr=0.05), dtype="float32")
    batch = data(rng, 32)
    first = tr.loss(**batch)
    for _ in range(50):
        tr.step(**batch)
    assert tr.loss(**batch) < 0.2 * first
    probs = tr.predict(x=batch["x"])["probs"]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("perm", [(0, 1), (1, 0)])
@pytest.mark.parametrize("square", [True, False])
def test_matmul_folds_only_a_real_transpose(backend, perm, square, rng):
    """sb.transpose(W, (0, 1)) is W: only the swap (1, 0) may fold into a product as W^T, on
    either side; with the identity permutation a non-square W is a valid product."""
    k, n = (3, 3) if square else (3, 5)
    m = sb.Model("perm")
    x, c = m.input("x", (k,)), m.input("c", (n,))
    W = m.param("W", (k, n) if perm == (0, 1) else (n, k))   # right operand: x @ W'
    V = m.param("V", (k, n) if perm == (0, 1) else (n, k))   # left operand: V' @ U
    U = m.param("U", (n, n))
    m.minimize(sb.sum((x @ sb.transpose(W, perm)) * c) + sb.sum(x @ (sb.transpose(V, perm) @ U)))
    batch = {"x": rng.normal(size=(4, k)), "c": rng.normal(size=(4, n))}
    tr = sb.compile(sb.derive(m), backend=backend, dtype="float64")
    X, C = batch["x"], batch["c"]
    Wp, Vp, Up = tr.params["W"].transpose(perm), tr.params["V"].transpose(perm), tr.params["U"]
    np.testing.assert_allclose(tr.loss(**batch), np.sum((X @ Wp) * C) + np.sum(X @ Vp @ Up), rtol=1e-12)
    np.testing.assert_allclose(tr.gradients(**batch)["W"], (X.T @ C).transpose(perm), rtol=1e-12)
    assert sb.gradcheck(m, batch, tolerance=1e-7, backend=backend).ok
