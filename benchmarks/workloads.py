"""Benchmark workloads: the peers' problems (../shared/peers/peers_bench.py), same sizes, data
and initial parameters, written for symbp and for each peer framework.

A workload is a ``Workload`` in ``WORKLOADS``: ``problem()`` gives float32 parameters and data
(numpy ``default_rng(0)``, uniform +-1/sqrt(fan_in) init, exactly as the peers'), ``model()``
the symbp model, and ``torch``/``jax`` build a step function for that framework. ``torch_nn``
(RNN, LSTM) uses torch.nn.RNN / nn.LSTM.
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
    torch_nn: Callable | None = None  # torch.nn.RNN / nn.LSTM modules (recurrent workloads only)
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
        return float(loss.detach())
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


# -- CNN: 8x8x1 -> conv 3x3x16 valid -> ReLU -> max-pool 2x2 -> dense 10, batch 64 --------------
# The peers' layout is NCHW with weights (16, 1, 3, 3); symbp's is NHWC with (3, 3, 1, 16).
# The problem is converted (same numbers, and the dense rows permuted to the NHWC flatten
# order), so every framework computes the same function from the same start.

BC = 64


def cnn_problem():
    rng = np.random.default_rng(0)
    Wc, bc = _uniform(rng, (16, 1, 3, 3), 9), _uniform(rng, (16,), 9)
    Wd, bd = _uniform(rng, (144, 10), 144), _uniform(rng, (10,), 144)
    X = rng.standard_normal((BC, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=BC).astype(np.int64)
    # NCHW flatten index c*9 + h*3 + w  ->  NHWC flatten index (h*3 + w)*16 + c
    perm = np.array([c * 9 + h * 3 + w for h in range(3) for w in range(3) for c in range(16)])
    P = {"Wc": np.ascontiguousarray(Wc.transpose(2, 3, 1, 0)), "bc": bc,
         "Wd": np.ascontiguousarray(Wd[perm]), "bd": bd}
    return P, {"x": np.ascontiguousarray(X.transpose(0, 2, 3, 1)), "y": y}


def cnn_model():
    import symbp as sb

    m = sb.Model("cnn")
    x = m.input("x", (8, 8, 1))
    y = m.input("y", (), dtype="int64")
    h = sb.relu(sb.conv2d(x, m.param("Wc", (3, 3, 1, 16))) + m.param("bc", (16,)))
    h = sb.reshape(sb.max_pool2d(h, 2), (144,))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("Wd", (144, 10)) + m.param("bd", (10,)), y))
    return m


def cnn_torch(P, D):
    import torch
    import torch.nn.functional as F

    p = [torch.tensor(v, requires_grad=True) for v in P.values()]
    X, y = torch.from_numpy(D["x"]), torch.from_numpy(D["y"])

    def step():
        Wc, bc, Wd, bd = p
        h = F.relu(F.conv2d(X.permute(0, 3, 1, 2), Wc.permute(3, 2, 0, 1)) + bc[None, :, None, None])
        h = F.max_pool2d(h, 2).permute(0, 2, 3, 1).reshape(-1, 144)
        loss = F.cross_entropy(h @ Wd + bd, y)
        for q in p:
            q.grad = None
        loss.backward()
        with torch.no_grad():
            for q in p:
                q.add_(q.grad, alpha=-LR)
        return float(loss.detach())
    return step


def cnn_jax(P, D):
    import jax
    import jax.numpy as jnp
    from jax import lax

    def loss_fn(p, X, y):
        Wc, bc, Wd, bd = p
        c = lax.conv_general_dilated(X, Wc, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        r = jax.nn.relu(c + bc)
        pooled = r.reshape(X.shape[0], 3, 2, 3, 2, 16).max(axis=(2, 4)).reshape(X.shape[0], 144)
        z = pooled @ Wd + bd
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


# -- RNN / LSTM: one-hot vocab 64 -> hidden 128 -> 64 logits, CE at every step, T=32, batch 32 --
# Batch-first here ((B, T, V)); the peers' arrays are time-first. Input and output projections
# are hoisted out of the loop, as in every peer implementation; only h @ W_hh is inside.

T, BR, V, H = 32, 32, 64, 128


def _onehot(idx, n):
    out = np.zeros(idx.shape + (n,), dtype=np.float32)
    np.put_along_axis(out, idx[..., None], 1.0, axis=-1)
    return out


def _seq_data(rng):
    tok = rng.integers(0, V, size=(T, BR))
    y = rng.integers(0, V, size=(T, BR)).astype(np.int64)
    return {"x": np.ascontiguousarray(_onehot(tok, V).transpose(1, 0, 2)), "y": np.ascontiguousarray(y.T)}


def rnn_problem():
    rng = np.random.default_rng(0)
    P = {"Wxh": _uniform(rng, (V, H), V), "Whh": _uniform(rng, (H, H), H), "bh": _uniform(rng, (H,), H),
         "Why": _uniform(rng, (H, V), H), "by": _uniform(rng, (V,), H)}
    return P, _seq_data(rng)


def lstm_problem():
    rng = np.random.default_rng(0)
    P = {"Wx": _uniform(rng, (V, 4 * H), V), "Wh": _uniform(rng, (H, 4 * H), H), "b": _uniform(rng, (4 * H,), H),
         "Why": _uniform(rng, (H, V), H), "by": _uniform(rng, (V,), H)}
    return P, _seq_data(rng)


def rnn_model():
    import symbp as sb

    m = sb.Model("rnn")
    x, y = m.input("x", (T, V)), m.input("y", (T,), dtype="int64")
    Wxh, Whh, bh = m.param("Wxh", (V, H)), m.param("Whh", (H, H)), m.param("bh", (H,))
    _, hs = sb.scan(lambda h, u: (lambda h2: (h2, h2))(sb.tanh(u + h @ Whh)), x @ Wxh + bh, sb.zeros((H,)))
    m.minimize(sb.softmax_cross_entropy(hs @ m.param("Why", (H, V)) + m.param("by", (V,)), y))
    return m


def lstm_model(in_step: bool = False):
    """in_step: x_t @ Wx written inside the step, as a textbook cell (and sb.layers.LSTM) has it;
    symbp.ops.hoist then moves it out of the loop itself (with SYMBP_HOIST=0 it stays in)."""
    import symbp as sb

    m = sb.Model("lstm_step" if in_step else "lstm")
    x, y = m.input("x", (T, V)), m.input("y", (T,), dtype="int64")
    Wx, Wh, b = m.param("Wx", (V, 4 * H)), m.param("Wh", (H, 4 * H)), m.param("b", (4 * H,))

    def cell(carry, u):
        h, c = carry
        z = u @ Wx + h @ Wh + b if in_step else u + h @ Wh
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = sb.sigmoid(f) * c + sb.sigmoid(i) * sb.tanh(g)
        h = sb.sigmoid(o) * sb.tanh(c)
        return (h, c), h

    _, hs = sb.scan(cell, x if in_step else x @ Wx + b, (sb.zeros((H,)), sb.zeros((H,))))
    m.minimize(sb.softmax_cross_entropy(hs @ m.param("Why", (H, V)) + m.param("by", (V,)), y))
    return m


def _seq_torch(lstm: bool):
    def build(P, D):
        import torch
        import torch.nn.functional as F

        p = [torch.tensor(v, requires_grad=True) for v in P.values()]
        X, y = torch.from_numpy(D["x"]), torch.from_numpy(D["y"])

        def step():
            Wx, Wh, b, Why, by = p
            u = X @ Wx + b
            h = torch.zeros(BR, H)
            c = torch.zeros(BR, H)
            hs = []
            for t in range(T):
                z = u[:, t] + h @ Wh
                if lstm:
                    i, f, g, o = z.split(H, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    h = torch.tanh(z)
                hs.append(h)
            logits = torch.stack(hs, 1) @ Why + by
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            for q in p:
                q.grad = None
            loss.backward()
            with torch.no_grad():
                for q in p:
                    q.add_(q.grad, alpha=-LR)
            return float(loss.detach())
        return step
    return build


def _seq_torch_nn(lstm: bool):
    """torch.nn.RNN / nn.LSTM + nn.Linear from the same parameters (the peers' torch_eager_nn;
    nn modules carry an extra zero bias_hh, trained too)."""
    def build(P, D):
        import torch
        import torch.nn.functional as F

        Wi, Wh, b, Why, by = P.values()
        rnn = torch.nn.LSTM(V, H, batch_first=True) if lstm else torch.nn.RNN(V, H, nonlinearity="tanh",
                                                                             batch_first=True)
        lin = torch.nn.Linear(H, V)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(torch.from_numpy(Wi.T.copy()))
            rnn.weight_hh_l0.copy_(torch.from_numpy(Wh.T.copy()))
            rnn.bias_ih_l0.copy_(torch.from_numpy(b))
            rnn.bias_hh_l0.zero_()
            lin.weight.copy_(torch.from_numpy(Why.T.copy()))
            lin.bias.copy_(torch.from_numpy(by))
        params = list(rnn.parameters()) + list(lin.parameters())
        X, y = torch.from_numpy(D["x"]), torch.from_numpy(D["y"])

        def step():
            out, _ = rnn(X)
            loss = F.cross_entropy(lin(out.reshape(BR * T, H)), y.reshape(-1))
            loss.backward()
            with torch.no_grad():
                for q in params:
                    q.add_(q.grad, alpha=-LR)
                    q.grad = None
            return float(loss.detach())
        return step
    return build


def _seq_jax(lstm: bool):
    def build(P, D):
        import jax
        import jax.numpy as jnp
        from jax import lax

        def loss_fn(p, X, y):
            Wx, Wh, b, Why, by = p
            u = jnp.swapaxes(X @ Wx + b, 0, 1)  # (T, B, .)

            def cell(carry, ut):
                h, c = carry
                z = ut + h @ Wh
                if lstm:
                    i, f, g, o = jnp.split(z, 4, axis=1)
                    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                    h = jax.nn.sigmoid(o) * jnp.tanh(c)
                else:
                    h = jnp.tanh(z)
                return (h, c), h

            zeros = jnp.zeros((X.shape[0], H), X.dtype)
            _, hs = lax.scan(cell, (zeros, zeros), u)
            z = jnp.swapaxes(hs, 0, 1) @ Why + by
            return jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0])

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
    return build


WORKLOADS = {
    "mlp": Workload("mlp", mlp_problem, mlp_model, mlp_torch, mlp_jax,
                    flops=2 * BM * (64 * 256 + 256 * 256 + 256 * 10)),
    "cnn": Workload("cnn", cnn_problem, cnn_model, cnn_torch, cnn_jax,
                    flops=2 * BC * 16 * 6 * 6 * 9 + 2 * BC * 144 * 10),
    "rnn": Workload("rnn", rnn_problem, rnn_model, _seq_torch(False), _seq_jax(False), _seq_torch_nn(False),
                    flops=2 * T * BR * (V * H + H * H + H * V)),
    "lstm": Workload("lstm", lstm_problem, lstm_model, _seq_torch(True), _seq_jax(True), _seq_torch_nn(True),
                     flops=2 * T * BR * (V * 4 * H + H * 4 * H + H * V)),
    "lstm_step": Workload("lstm_step", lstm_problem, lambda: lstm_model(in_step=True), _seq_torch(True), _seq_jax(True),
                          _seq_torch_nn(True), flops=2 * T * BR * (V * 4 * H + H * 4 * H + H * V)),
}
