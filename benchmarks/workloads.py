"""Benchmark workloads: the peers' problems (../shared/peers/peers_bench.py), same sizes, data
and initial parameters, written for symbp and for each peer framework.

A workload is a ``Workload`` in ``WORKLOADS``: ``problem()`` gives float32 parameters and data
(numpy ``default_rng(0)``, uniform +-1/sqrt(fan_in) init, exactly as the peers'), ``model()``
the symbp model, and ``torch``/``jax`` build a step function for that framework. RNN, LSTM
and CNN plug in here once symbp has scan and convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LR = 0.01
BM = 128  # MLP batch


@dataclass
class Workload:
    name: str
    problem: Callable      # () -> (params dict, data dict with "x", "y")
    model: Callable        # () -> symbp Model with inputs "x", "y"
    torch: Callable | None = None   # (P, D) -> step() returning the loss
    jax: Callable | None = None     # (P, D) -> step() returning the loss (synchronised)
    flops: int = 0         # forward matmul FLOPs; a training step is ~3x


def _uniform(rng, shape, fan_in):
    k = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-k, k, size=shape).astype(np.float32)


# -- MLP: 64 -> 256 tanh -> 256 tanh -> 10, softmax cross-entropy, batch 128 -----------------

def mlp_problem():
    rng = np.random.default_rng(0)
    P = {"W1": _uniform(rng, (64, 256), 64), "b1": _uniform(rng, (256,), 64),
         "W2": _uniform(rng, (256, 256), 256), "b2": _uniform(rng, (256,), 256),
         "W3": _uniform(rng, (256, 10), 256), "b3": _uniform(rng, (10,), 256)}
    X = rng.standard_normal((BM, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=BM).astype(np.int64)
    return P, {"x": X, "y": y}


def mlp_model():
    import symbp as sb

    m = sb.Model("mlp")
    x = m.input("x", (64,))
    y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (64, 256)) + m.param("b1", (256,)))
    h = sb.tanh(h @ m.param("W2", (256, 256)) + m.param("b2", (256,)))
    logits = h @ m.param("W3", (256, 10)) + m.param("b3", (10,))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def mlp_torch(P, D):
    import torch
    import torch.nn.functional as F

    p = [torch.tensor(v, requires_grad=True) for v in P.values()]
    X, y = torch.from_numpy(D["x"]), torch.from_numpy(D["y"])

    def step():
        W1, b1, W2, b2, W3, b3 = p
        h = torch.tanh(X @ W1 + b1)
        h = torch.tanh(h @ W2 + b2)
        loss = F.cross_entropy(h @ W3 + b3, y)
        for q in p:
            q.grad = None
        loss.backward()
        with torch.no_grad():
            for q in p:
                q.add_(q.grad, alpha=-LR)
        return float(loss)
    return step


def mlp_jax(P, D):
    import jax
    import jax.numpy as jnp

    def loss_fn(p, X, y):
        W1, b1, W2, b2, W3, b3 = p
        h = jnp.tanh(X @ W1 + b1)
        h = jnp.tanh(h @ W2 + b2)
        z = h @ W3 + b3
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])

    def step(p, X, y):
        loss, g = jax.value_and_grad(loss_fn)(p, X, y)
        return tuple(a - LR * b for a, b in zip(p, g)), loss

    jstep = jax.jit(step, donate_argnums=0)
    state = {"p": tuple(jnp.asarray(v) for v in P.values())}
    X, y = jnp.asarray(D["x"]), jnp.asarray(D["y"].astype(np.int32))

    def run():
        state["p"], loss = jstep(state["p"], X, y)
        jax.block_until_ready((state["p"], loss))
        return float(loss)
    return run


WORKLOADS = {
    "mlp": Workload("mlp", mlp_problem, mlp_model, mlp_torch, mlp_jax,
                    flops=2 * BM * (64 * 256 + 256 * 256 + 256 * 10)),
}
