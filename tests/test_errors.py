"""Bad input gets a clear error that names the user's thing."""

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import DataError, NonFiniteLoss


def model():
    m = sb.Model("net")
    x = m.input("x", (4,))
    y = m.input("y", (), dtype="int64")
    W = m.param("W", (4, 3))
    m.minimize(sb.softmax_cross_entropy(x @ W, y))
    return m


@pytest.fixture(scope="module")
def tr():
    return sb.compile(sb.derive(model()), optimizer=sb.optim.SGD(lr=0.1))


def test_matmul_shape_mismatch_names_both_shapes_and_the_parameter():
    m = sb.Model("bad")
    x = m.input("x", (5,))
    W = m.param("W", (4, 3))
    with pytest.raises(sb.SymbpError, match=r"matmul.*input 'x'.*\(batch, 5\).*parameter 'W'.*\(4, 3\)"):
        x @ W


def test_broadcast_mismatch_names_the_op_and_operands():
    m = sb.Model("bad")
    x = m.input("x", (5,))
    b = m.param("b", (3,))
    with pytest.raises(sb.SymbpError, match=r"'add'.*input 'x'.*parameter 'b'.*do not broadcast"):
        x + b


def test_batch_axis_never_broadcasts_against_a_feature_axis():
    m = sb.Model("bad")
    x = m.input("x", (3,))
    with pytest.raises(sb.SymbpError, match="batch axis against another axis"):
        sb.mse(x @ m.param("W", (3, 1)), m.input("y", ()))


def test_labels_reached_through_a_slice_are_range_checked():
    m = sb.Model("sliced")
    z = m.input("z", (3,))
    y = m.input("y", (2,), dtype="int64")
    m.minimize(sb.softmax_cross_entropy(z * m.param("s", (), init="ones"), y[:, 0]))
    tr = sb.compile(sb.derive(m))
    with pytest.raises(DataError, match=r"labels outside 0..2"):
        tr.loss(z=np.zeros((2, 3)), y=np.array([[0, 5], [-1, 0]]))


def test_layer_width_mismatch_names_the_layer():
    m = sb.Model("bad")
    fc = sb.layers.Dense(8, name="fc2")
    fc(m, m.input("a", (16,)))
    with pytest.raises(sb.SymbpError, match="layer 'fc2': expects input width 16, got 12"):
        fc(m, m.input("b", (12,)))


def test_errors_on_layer_outputs_name_the_layer():
    m = sb.Model("bad")
    h = sb.layers.Dense(8, activation="tanh", name="fc1")(m, m.input("x", (4,)))
    with pytest.raises(sb.SymbpError, match="layer 'fc1'"):
        h @ m.param("W", (7, 2))


@pytest.mark.parametrize("call, message", [
    (lambda m: (m.param("W", (2,)), m.input("W", (2,))), "already used"),
    (lambda m: m.input("x", (2,), dtype="float16"), "unknown dtype"),
    (lambda m: m.param("W", (2,), init="magic"), "unknown initialiser"),
    (lambda m: m.param("W", (2,), init="normal", sd=1), "takes std, mean, not sd"),
    (lambda m: m.param("W", (0, 2)), "positive ints"),
    (lambda m: m.param("a b", (2,)), "not a valid Python identifier"),
    (lambda m: m.param("x\"]; import os; #", (2,)), "not a valid Python identifier"),
    (lambda m: m.input("class", (2,)), "not a valid Python identifier"),
    (lambda m: m.minimize(m.input("v", (3,))), "must be a scalar"),
    (lambda m: sb.layers.Dense(3, activation="wiggle"), "unknown activation"),
    (lambda m: m.input("x", (2,)) ** m.input("y", (2,)), "constant exponent"),
    (lambda m: m.input("x", (2,))[:, 5], "not valid for an axis of size 2"),
    (lambda m: sb.sum(m.input("x", (2,)), axis=3), "out of range"),
    (lambda m: sb.exp(m.input("y", (), dtype="int64")), "float tensors"),
    (lambda m: sb.softmax_cross_entropy(m.input("z", (3,)), m.input("y", (2,), dtype="int64")),
     "without the class axis"),
])
def test_definition_errors(call, message):
    with pytest.raises(sb.SymbpError, match=message):
        call(sb.Model("bad"))


def test_unknown_op_names_the_registry():
    from symbp.ops.structural import node

    with pytest.raises(sb.SymbpError, match="unknown op 'frobnicate'"):
        node("frobnicate", ())


def test_compile_option_errors():
    d = sb.derive(model())
    with pytest.raises(sb.SymbpError, match="unknown backend"):
        sb.compile(d, backend="fortran")
    with pytest.raises(sb.SymbpError, match="unknown dtype"):
        sb.compile(d, dtype="float16")
    with pytest.raises(sb.SymbpError, match="no parameter 'V'"):
        sb.compile(d, params={"V": np.zeros(2)})
    with pytest.raises(sb.SymbpError, match="minimize"):
        sb.derive(sb.Model("empty"))


def test_unused_parameter_is_reported():
    m = model()
    m.param("lonely", (2,))
    with pytest.raises(sb.SymbpError, match="'lonely'.*do not affect the loss"):
        sb.derive(m)


GOOD = {"x": np.ones((2, 4)), "y": np.array([0, 2])}


@pytest.mark.parametrize("batch, message", [
    ({"x": GOOD["x"]}, "missing input 'y'"),
    ({**GOOD, "z": 1}, "unexpected input.*'z'"),
    ({**GOOD, "x": np.ones((2, 5))}, r"input 'x' must have shape \(batch, 4\), got \(2, 5\)"),
    ({**GOOD, "x": np.ones(4)}, r"input 'x' must have shape"),
    ({**GOOD, "y": np.array([0.0, 1.0])}, "must be integers"),
    ({**GOOD, "y": np.array([0, 3])}, r"labels outside 0..2"),
    ({**GOOD, "y": np.array([0, 1, 2])}, "different batch sizes"),
    ({**GOOD, "x": np.array([["a"] * 4] * 2)}, "must be numeric"),
    ({"x": np.ones((0, 4)), "y": np.zeros(0, int)}, "empty"),
])
def test_batch_errors(tr, batch, message):
    with pytest.raises(DataError, match=message):
        tr.step(**batch)


def test_nan_loss_stops_without_touching_parameters(tr):
    before = {k: v.copy() for k, v in tr.params.items()}
    with pytest.raises(NonFiniteLoss, match=r"step \d+: the loss is nan"):
        tr.step(x=np.full((2, 4), np.nan), y=GOOD["y"])
    for k in before:
        np.testing.assert_array_equal(tr.params[k], before[k])


def test_assigning_parameters_checks_shape(tr):
    with pytest.raises(DataError, match=r"parameter 'W' has shape \(4, 3\)"):
        tr.params["W"] = np.zeros((3, 4))
    with pytest.raises(KeyError, match="no parameter"):
        tr.params["V"] = np.zeros(2)


def test_names_that_collide_with_generated_code_still_work(rng):
    m = sb.Model("np")
    x = m.input("np", (3,))
    B = m.param("B", (3, 2))
    loss = m.param("loss", (2,), init="zeros")
    m.minimize(sb.mse(x @ B + loss, m.input("math", (2,))))
    result = sb.gradcheck(m, {"np": rng.normal(size=(4, 3)), "math": rng.normal(size=(4, 2))})
    assert result.ok
