"""The zoo: the Cython backend at the flags users run (``-O3 -march=native``, never the suite's
``-O1``) against the NumPy backend, in float64 (1e-10) and float32 (1e-5 relative).

Every registered op; conv2d over C_in in CIN, C_out in COUT, kernels 1/3/5, strides 1/2, both
paddings, each followed by max or avg pooling; recurrences with masks, truncation and carried
state; the examples' models. Configurations are batched into a few models (many branches
summed into one loss), so gcc runs a dozen times, not hundreds; compiled modules are shared
through the cache. Run it alone with ``pytest -m zoo``. CI also runs it with the kernels built
under AddressSanitizer and UBSan (``SYMBP_SANITIZE=1``, see .ci/run), where any report fails.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import symbp as sb
from symbp.ir import topo_order
from symbp.ops import elementwise as E
from tests.helpers import example
from tests.test_cython import all_ops_model, close

pytestmark = [pytest.mark.zoo, pytest.mark.skipif(importlib.util.find_spec("Cython") is None, reason="needs Cython")]
L = sb.layers
BATCH = 5  # no multiple of a vector width
CIN = (1, 3, 8, 12, 16, 17, 32)
COUT = (1, 4, 16, 17)
GEOMETRY = [(k, s, p) for k in (1, 3, 5) for s in (1, 2) for p in ("same", "valid")]


@pytest.fixture(scope="module", autouse=True)
def default_flags():
    """Build at the default flags: the suite's conftest sets ``SYMBP_CFLAGS=-O1`` for speed."""
    saved = os.environ.pop("SYMBP_CFLAGS", None)
    yield
    if saved is not None:
        os.environ["SYMBP_CFLAGS"] = saved


def merge(name: str, parts: list) -> tuple:
    """One model from several: part ``(prefix, model, batch)``'s inputs, parameters and loop
    labels renamed ``<prefix>_<name>``, the losses summed. Returns (model, batch)."""
    m = sb.Model(name)
    batch, loss = {}, None
    for prefix, mi, bi in parts:
        for table, target in ((mi.inputs, m.inputs), (mi.params, m.params)):
            for k, node in table.items():
                node.name = f"{prefix}_{k}"
                target[node.name] = node
                if k in bi:
                    batch[node.name] = bi[k]
        for n in topo_order([mi.loss]):
            if n.op == "scan" and n.label:
                n.label = f"{prefix}_{n.label}"
        loss = mi.loss if loss is None else E.add(loss, mi.loss)
    m.minimize(loss)
    return m, batch


def conv_part(cin: int, rng, shape=(9, 8)) -> tuple:
    """Twelve conv2d + pooling branches over one (B, 9, 8, C_in) input: every kernel, stride and
    padding once, in four groups of three (each with both paddings), each group with its own
    C_out, rotated per C_in: every C_in meets every C_out with both paddings, and every C_out
    every geometry. The input is scaled by a parameter, so its gradient is tested too."""
    m = sb.Model(f"conv{cin}")
    x = m.input("x", (*shape, cin))
    xin = x * m.param("s", (*shape, cin), init="ones")
    loss = None
    for j, (k, s, pad) in enumerate(GEOMETRY):
        cout = COUT[(j // 3 + CIN.index(cin)) % len(COUT)]
        name = f"c{cout}_k{k}_s{s}_{pad}"
        y = L.Conv2D(cout, k, s, pad, activation="tanh", name=name)(m, xin)
        window = (min(2, y.shape[1]), min(2, y.shape[2]))
        y = (L.MaxPool2D if j % 2 == 0 else L.AvgPool2D)(window, 1, name=f"pool_{name}")(m, y)
        loss = sb.mean(y * y) if loss is None else loss + sb.mean(y * y)
    m.minimize(loss)
    params = {k: rng.normal(0, 0.4, v.shape) for k, v in m.params.items()}
    return m, {"x": rng.normal(size=(BATCH, *shape, cin))}, params


def conv_model(cins, rng) -> tuple:
    parts, params = [], {}
    for cin in cins:
        mi, bi, pi = conv_part(cin, rng)
        parts.append((f"i{cin}", mi, bi))
        params.update({f"i{cin}_{k}": v for k, v in pi.items()})
    m, batch = merge("zoo_conv_" + "_".join(map(str, cins)), parts)
    return m, batch, params


def recurrent_model(rng) -> tuple:
    """A masked SimpleRNN, a truncated LSTM (sequence out), a stateful GRU, and a stateful scan
    with a tuple carry and truncation, written with sb.scan."""
    T, F = 7, 3
    m = sb.Model("zoo_rnn")
    s, mask = m.input("s", (T, F)), m.input("mask", (T,))
    y = m.input("y", (4,))
    a = L.SimpleRNN(5, return_sequences=False, name="rnn")(m, s, mask=mask)
    b = L.LSTM(6, truncate=(3, 2), name="lstm")(m, s)
    c = L.GRU(4, return_sequences=False, stateful=True, name="gru")(m, b)
    U, V = m.param("U", (F, 4)), m.param("V", (4, 4))

    def step(carry, x_t):
        h, q = carry
        h = sb.tanh(x_t @ U + h @ V + q)
        return (h, sb.sigmoid(q - h)), h

    (hT, _), hs = sb.scan(step, s, (sb.zeros((4,)), sb.zeros((4,))), truncate=(4, 4), stateful=True, label="pair")
    out = L.Dense(4, name="head")(m, sb.concat([a, c, hT], axis=-1))
    m.minimize(sb.mse(out, y) + sb.mean(hs * hs))
    lengths = rng.integers(1, T + 1, BATCH)
    batch = {"s": rng.normal(size=(BATCH, T, F)), "y": rng.normal(size=(BATCH, 4)),
             "mask": (np.arange(T)[None, :] < lengths[:, None]).astype(float)}
    return m, batch, None


def _example(name: str):
    return example(name, f"zoo_{name}")


def examples_model(rng) -> tuple:
    """The examples' models in one: the digits MLP and CNN, the char-RNN (a stateful LSTM over
    one-hot ids), and the time-series LSTM, GRU and SimpleRNN."""
    parts = []
    digits = {"x": rng.uniform(0, 1, (BATCH, 64)), "y": rng.integers(0, 10, BATCH)}
    parts.append(("mlp", _example("mlp_digits").build(hidden=32), digits))
    images = {"x": rng.uniform(0, 1, (BATCH, 8, 8, 1)), "y": digits["y"]}
    parts.append(("cnn", _example("cnn_digits").build(filters=16), images))
    T = 8
    ids = {"x": rng.integers(0, 11, (BATCH, T)), "y": rng.integers(0, 11, (BATCH, T))}
    parts.append(("chars", _example("char_rnn").build(11, 16, T, "chars"), ids))
    series = _example("time_series")
    for kind in ("LSTM", "GRU", "SimpleRNN"):
        batch = {"s": rng.normal(size=(BATCH, 12, 1)), "y": rng.normal(size=(BATCH, 1))}
        parts.append((kind.lower(), series.build(kind, 12, 8), batch))
    m, batch = merge("zoo_examples", parts)
    return m, batch, None


MODELS = {
    "ops": lambda rng: all_ops_model(rng),
    # one model per C_in: gcc's time grows faster than the size of the one function it compiles
    **{f"conv{c}": (lambda rng, c=c: conv_model((c,), rng)) for c in CIN},
    "recurrent": recurrent_model,
    "examples": examples_model,
}
DTYPES = ["float64", "float32"]


def trainers(name: str, dtype: str) -> tuple:
    """(numpy trainer, cython trainer, batch) for zoo model ``name``, same initial parameters."""
    m, batch, params = MODELS[name](np.random.default_rng(0))
    d = sb.derive(m)
    kw = dict(dtype=dtype, params=params, seed=0, optimizer=sb.optim.Momentum(lr=0.01))
    return sb.compile(d, backend="numpy", **kw), sb.compile(d, backend="cython", **kw), batch


@pytest.fixture(scope="module")
def built(request, default_flags):
    """Every selected model compiled up front, a few at a time: the C compiler runs in
    subprocesses, so the builds overlap where there are cores."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = [(item.callspec.params["name"], item.callspec.params["dtype"]) for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return {key: pool.submit(trainers, *key) for key in wanted}  # a failed build fails its own test


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_cython_at_default_flags_matches_numpy(built, name, dtype):
    """Loss, gradients, three momentum steps (carried state included) and the parameters after them."""
    from codegen.cython import build

    assert "-O1" not in build.compile_flags()
    tn, tc, batch = built[name, dtype].result()
    close(tc.loss(**batch), tn.loss(**batch), dtype, f"{name}: loss")
    gn, gc = tn.gradients(**batch), tc.gradients(**batch)
    for k in gn:
        assert np.all(np.isfinite(gc[k])), f"{name}: non-finite gradient of {k}"
        close(gc[k], gn[k], dtype, f"{name}: gradient of {k}")
    for i in range(3):
        close(tc.step(**batch), tn.step(**batch), dtype, f"{name}: loss of step {i + 1}")
    for k in tn.params:
        close(tc.params[k], tn.params[k], dtype, f"{name}: parameter {k} after 3 steps")
