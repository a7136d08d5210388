"""Each optimiser's update against a few lines of reference NumPy (float64)."""

import numpy as np
import pytest

import symbp as sb


def tiny_model():
    m = sb.Model("tiny")
    x = m.input("x", (3,))
    y = m.input("y", (2,))
    W = m.param("W", (3, 2), init="normal", std=0.5)
    b = m.param("b", (2,), init="normal", std=0.5)
    m.minimize(sb.mse(sb.tanh(x @ W + b), y))
    return sb.derive(m)


def reference(name, opt, p, g, s, t):
    """Textbook updates; ``s`` holds the optimiser state for this parameter."""
    h = opt.hyper
    if name == "sgd":
        return p - h["lr"] * (g + h["weight_decay"] * p)
    if name in ("momentum", "nesterov"):
        s["v"] = h["momentum"] * s.get("v", 0) + g
        return p - h["lr"] * (g + h["momentum"] * s["v"] if name == "nesterov" else s["v"])
    if name == "rmsprop":
        s["s"] = h["rho"] * s.get("s", 0) + (1 - h["rho"]) * g * g
        return p - h["lr"] * g / (np.sqrt(s["s"]) + h["eps"])
    s["m"] = h["beta1"] * s.get("m", 0) + (1 - h["beta1"]) * g
    s["v"] = h["beta2"] * s.get("v", 0) + (1 - h["beta2"]) * g * g
    mhat = s["m"] / (1 - h["beta1"] ** t)
    vhat = s["v"] / (1 - h["beta2"] ** t)
    return p - h["lr"] * (mhat / (np.sqrt(vhat) + h["eps"]) + h["weight_decay"] * p)


OPTIMISERS = {
    "sgd": lambda **c: sb.optim.SGD(lr=0.1, weight_decay=0.01, **c),
    "momentum": lambda **c: sb.optim.Momentum(lr=0.1, momentum=0.8, **c),
    "nesterov": lambda **c: sb.optim.Momentum(lr=0.1, momentum=0.8, nesterov=True, **c),
    "rmsprop": lambda **c: sb.optim.RMSprop(lr=0.01, rho=0.9, eps=1e-7, **c),
    "adam": lambda **c: sb.optim.Adam(lr=0.01, **c),
    "adamw": lambda **c: sb.optim.AdamW(lr=0.01, weight_decay=0.1, **c),
}


def clip(grads, clip_value, clip_norm):
    if clip_value is not None:
        grads = {k: np.clip(g, -clip_value, clip_value) for k, g in grads.items()}
    if clip_norm is not None:
        norm = np.sqrt(sum((g * g).sum() for g in grads.values()))
        if norm > clip_norm:
            grads = {k: g * clip_norm / (norm + 1e-6) for k, g in grads.items()}
    return grads


CLIPPING = [{}, {"clip_value": 0.05}, {"clip_norm": 0.1}, {"clip_value": 0.05, "clip_norm": 0.1}]


@pytest.mark.parametrize("clipping", CLIPPING, ids=["plain", "value", "norm", "value-then-norm"])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_update_matches_reference(name, clipping, rng):
    d = tiny_model()
    opt = OPTIMISERS[name](**clipping)
    tr = sb.compile(d, optimizer=opt, dtype="float64", seed=1)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    params = {k: v.copy() for k, v in tr.params.items()}
    state = {k: {} for k in params}
    for t in range(1, 4):
        grads = clip(tr.gradients(x=X, y=Y), clipping.get("clip_value"), clipping.get("clip_norm"))
        tr.step(x=X, y=Y)
        for k in params:
            params[k] = reference(name, opt, params[k], grads[k], state[k], t)
            np.testing.assert_allclose(tr.params[k], params[k], rtol=1e-12, atol=1e-14, err_msg=f"{name} step {t} {k}")


def test_hyperparameters_change_without_rebuild(rng):
    tr = sb.compile(tiny_model(), optimizer=sb.optim.SGD(lr=0.1), dtype="float64")
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    before = tr.params["W"].copy()
    g = tr.gradients(x=X, y=Y)["W"]
    tr.optimizer.lr = 0.5
    tr.step(x=X, y=Y)
    np.testing.assert_allclose(tr.params["W"], before - 0.5 * g, rtol=1e-12)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="lr"):
        sb.optim.SGD(lr=-1)
    with pytest.raises(ValueError, match="clip_norm"):
        sb.optim.Adam(clip_norm=0)
    with pytest.raises(ValueError, match="lr must be a finite"):
        sb.optim.SGD(lr=float("inf"))
    with pytest.raises(ValueError, match="beta1 must be below 1"):
        sb.optim.Adam(beta1=1.0)
    with pytest.raises(ValueError, match="momentum must be below 1"):
        sb.optim.Momentum(momentum=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        sb.compile(tiny_model(), optimizer="adam")
