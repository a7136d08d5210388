"""A layer is called on a tensor, ``layer(x)``: the model is found from the graph (the inputs and
parameters x is computed from know their model). ``layer(m, x)`` keeps working, and both build
the same model."""

import numpy as np
import pytest

import symbp as sb

L = sb.layers

# name -> (a fresh layer, per-example input shape, extra keyword arguments of the call)
LAYERS = {
    "Dense": (lambda: L.Dense(10), (6,), {}),
    "Dense_named_relu": (lambda: L.Dense(5, activation="relu", name="fc1"), (6,), {}),
    "Sequential": (lambda: L.Sequential([L.Dense(8, activation="tanh"), L.Dense(3)]), (6,), {}),
    "Residual": (lambda: L.Residual([L.Dense(6, activation="tanh"), L.LayerNorm()]), (6,), {}),
    "Conv2D": (lambda: L.Conv2D(3, 3, padding="same", activation="relu"), (5, 5, 2), {}),
    "MaxPool2D": (lambda: L.MaxPool2D(2), (4, 4, 2), {}),
    "AvgPool2D": (lambda: L.AvgPool2D(2), (4, 4, 2), {}),
    "GlobalAvgPool2D": (lambda: L.GlobalAvgPool2D(), (4, 4, 2), {}),
    "Flatten": (lambda: L.Flatten(), (4, 4, 2), {}),
    "LayerNorm": (lambda: L.LayerNorm(), (6,), {}),
    "SimpleRNN": (lambda: L.SimpleRNN(4), (5, 3), {}),
    "LSTM": (lambda: L.LSTM(4), (5, 3), {}),
    "GRU_last": (lambda: L.GRU(4, return_sequences=False), (5, 3), {}),
    "GRU_masked": (lambda: L.GRU(4), (5, 3), {"mask": True}),
}


def _build(kind: str, explicit: bool):
    make, shape, kw = LAYERS[kind]
    m = sb.Model("calls")
    x = m.input("x", shape)
    kw = {"mask": m.input("mask", shape[:1])} if kw.get("mask") else {}
    # A parameter before the layer, so the layer must also work on a computed tensor.
    h = x * m.param("scale", shape, init="normal", std=1.0)
    y = make()(m, h, **kw) if explicit else make()(h, **kw)
    m.minimize(sb.mean(sb.tanh(y) ** 2))
    return m


@pytest.mark.parametrize("kind", list(LAYERS))
def test_a_layer_called_on_a_tensor_builds_what_layer_m_x_builds(kind, rng):
    shape = LAYERS[kind][1]
    batch = {"x": rng.normal(size=(3, *shape))}
    if LAYERS[kind][2].get("mask"):
        batch["mask"] = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], float)
    results = []
    for explicit in (False, True):
        m = _build(kind, explicit)
        tr = sb.compile(sb.derive(m), dtype="float64", seed=1)
        results.append((list(m.params), tr.loss(**batch), tr.gradients(**batch)))
    (names, loss, grads), (names_m, loss_m, grads_m) = results
    assert names == names_m and len(names) >= 1
    assert loss == loss_m
    for k in names:
        np.testing.assert_array_equal(grads[k], grads_m[k])


def test_unnamed_layers_are_named_per_model_in_call_order():
    m = sb.Model("names")
    x = m.input("x", (4,))
    L.Dense(3)(L.Dense(5, activation="relu")(x))
    assert list(m.params) == ["dense1_W", "dense1_b", "dense2_W", "dense2_b"]


def test_a_layer_inside_a_scan_step_finds_the_model_through_x_t(rng):
    m = sb.Model("stepdense")
    s = m.input("s", (5, 3))
    cell = L.Dense(4, activation="tanh", name="cell")

    def step(h, x_t):
        h = cell(sb.concat([x_t, h]))
        return h, h

    hT, _ = sb.scan(step, s, sb.zeros((4,)))
    m.minimize(sb.mean(hT * hT))
    assert list(m.params) == ["cell_W", "cell_b"]
    assert sb.gradcheck(m, {"s": rng.normal(size=(2, 5, 3))}).ok


def test_a_tensor_of_no_model_is_a_clear_error():
    with pytest.raises(sb.SymbpError, match=r"layer 'dense': cannot tell which model .* layer\(m, x\)"):
        L.Dense(3)(sb.zeros((4,)))


def test_a_tensor_of_two_models_is_a_clear_error():
    a, b = sb.Model("a"), sb.Model("b")
    x = a.input("x", (4,)) + b.input("x", (4,))
    with pytest.raises(sb.SymbpError, match=r"layer 'fc': .*several models \(('a' and 'b'|'b' and 'a')\)"):
        L.Dense(3, name="fc")(x)


@pytest.mark.parametrize("args, text", [((), "got nothing"), ((np.zeros(3),), "got ndarray"),
                                        ((sb.Model("m"),), "got nothing")])
def test_a_layer_needs_a_tensor(args, text):
    with pytest.raises(sb.SymbpError, match=f"layer 'dense': expected a symbolic tensor input, {text}"):
        L.Dense(3)(*args)
