"""Readable derived equations: content, LaTeX well-formedness, every op, determinism, and the
equations' values checked against the compiled gradients (so the display cannot drift from
what is computed)."""

import dataclasses
import functools
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symbp as sb
from symbp import notation as D
from symbp.notation import B, symbol
from symbp.show.equations import Equations
from tests.helpers import BATCH, op_model, op_names, readme_mlp


def dense_mse():
    m = sb.Model("net")
    x, t = m.input("x", (5,)), m.input("t", (3,))
    net = sb.layers.Sequential([sb.layers.Dense(6, activation="relu", name="fc1"),
                                sb.layers.Dense(4, activation="sigmoid", name="fc2"), sb.layers.Dense(3, name="out")])
    m.minimize(sb.mse(net(m, x), t))
    return m


def shared_logits():
    """Logits read by the cross-entropy and a penalty: the general softmax backward applies."""
    m = sb.Model("reg")
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    z = sb.swish(x @ m.param("W", (5, 4)) + m.param("b", (4,)))
    m.minimize(sb.softmax_cross_entropy(z, y) + 0.01 * sb.sum(z * z))
    return m


def softmax_slices():
    m = sb.Model("sm")
    x = m.input("x", (5,))
    W = m.param("W", (5, 4))
    p = m.output("probs", sb.softmax(sb.elu(x @ W)))
    m.minimize(sb.mean(sb.log(p[:, 1:3]) + sb.maximum(x @ W, 0.5)[:, :2]) + sb.mean(sb.logsumexp(x @ W)))
    return m


def scalar_param():
    m = sb.Model("sc")
    x, a, W = m.input("x", (3,)), m.param("alpha", (), init=0.5), m.param("W_out", (3, 2))
    m.minimize(sb.mean(sb.leaky_relu(a * (x @ W), 0.2)))
    return m


def two_cross_entropies():
    """One scaled CE whose logits are read again (general form), one whose are not (identity)."""
    m = sb.Model("two")
    x, y, p = m.input("x", (3,)), m.input("y", (), dtype="int64"), m.input("p", (4,))
    z = x @ m.param("W", (3, 4))
    m.minimize(2 * sb.softmax_cross_entropy(z, y) + sb.softmax_cross_entropy(sb.tanh(z), y)
               + sb.softmax_cross_entropy(z, p) + sb.binary_cross_entropy_with_logits(z, p))
    return m


MODELS = {"mlp": readme_mlp, "dense_mse": dense_mse, "shared_logits": shared_logits, "softmax_slices": softmax_slices,
          "scalar_param": scalar_param, "two_cross_entropies": two_cross_entropies}


def random_batch(m, rng):
    batch = {}
    for name, n in m.inputs.items():
        shape = (BATCH, *n.shape[1:])
        batch[name] = rng.integers(0, 3, shape) if n.dtype == "int64" else rng.normal(0, 1, shape)
    return batch


# -- a numerical reading of the display expressions ------------------------------------------

def _axes(sub: str) -> tuple:
    return tuple(0 if a == "batch" else 1 for a in sub.split(","))


def _index(sub: str) -> tuple:
    return tuple(slice(*[int(v) for v in part.split(":")]) if part.strip() != ":" else slice(None)
                 for part in sub.split(", "))


def _softmax(a, axis):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


ELEMENTWISE = {"tanh": np.tanh, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "sign": np.sign,
               "σ": lambda a: 1 / (1 + np.exp(-a)), "softplus": lambda a: np.logaddexp(0, a), "log1p": np.log1p,
               "expm1": np.expm1, "relu": lambda a: np.maximum(a, 0), "𝟙": lambda a: (a > 0) * 1.0,
               "where": lambda c, a, b: np.where(c > 0, a, b), "max": np.maximum, "min": np.minimum,
               "elu": lambda a, alpha: np.where(a > 0, a, alpha * np.expm1(a))}
REDUCTIONS = {"Σ": np.sum, "max": np.max, "logsumexp": lambda a, axis, keepdims: np.log(
    np.sum(np.exp(a - a.max(axis, keepdims=True)), axis, keepdims=True)) + a.max(axis, keepdims=True),
    "softmax": lambda a, axis, keepdims: _softmax(a, axis),
    "log_softmax": lambda a, axis, keepdims: np.log(_softmax(a, axis)),
    "argmax": lambda a, axis, keepdims: np.argmax(a, axis=axis[0], keepdims=keepdims)}


def evaluate(e, env: dict):
    """The value of a display expression, each matrix held in its display shape."""
    if e in env:
        return env[e]
    if isinstance(e, (sp.Number, sp.NumberSymbol)):
        return float(e)
    ev = [evaluate(a, env) for a in e.args] if not isinstance(e, (D.Func, D.SFunc)) else None
    if isinstance(e, (sp.Add, D.MatAdd)):
        return sum(ev)
    if isinstance(e, D.MatMul):
        out = 1.0
        for a, v in zip(e.args, ev):
            out = out @ v if D.is_matrix(a) and np.ndim(out) else out * v
        return out
    if isinstance(e, (sp.Mul, D.HadamardProduct)):
        return functools.reduce(operator.mul, ev)
    if isinstance(e, (sp.Pow, D.HadamardPower)):
        return ev[0] ** ev[1]
    if isinstance(e, D.Transpose):
        return ev[0].T
    if isinstance(e, (D.Fill, D.Bcast)):
        return ev[0]
    if isinstance(e, D.Div):
        return ev[0] / ev[1]
    if isinstance(e, sp.Function):
        return ELEMENTWISE[{"sigmoid": "σ", "Abs": "abs"}.get(type(e).__name__, type(e).__name__)](*ev)
    assert isinstance(e, (D.Func, D.SFunc)), f"cannot evaluate {type(e).__name__}"
    args = [evaluate(a, env) for a in e.operands]
    scalar = isinstance(e, D.SFunc)
    if e.name in REDUCTIONS and e.sub:
        return REDUCTIONS[e.name](args[0], axis=None if scalar else _axes(e.sub), keepdims=not scalar)
    shape = tuple(int(d.subs(B, BATCH)) for d in e.shape) if not scalar else ()
    if e.name == "onehot":
        return np.eye(shape[1])[args[0][:, 0]]
    if e.name == "index":
        return args[0][_index(e.sub)]
    if e.name == "unslice":
        out = np.zeros(shape)
        out[_index(e.sub)] = args[0]
        return out
    if e.name == "concat":
        return np.concatenate(args, axis=1)
    if e.name == "reshape":
        return np.full(shape, args[0]) if np.size(args[0]) == 1 else np.reshape(args[0], shape)
    return ELEMENTWISE[e.name](*args)


def check_values(m, eqs: Equations, batch: dict, params: dict | None = None) -> int:
    """Evaluate every equation in order; compare the loss and gradients with the compiled ones."""
    tr = sb.compile(sb.derive(m), dtype="float64", seed=1, params=params)
    env = {B: float(BATCH)}
    for name, n in [*m.inputs.items(), *m.params.items()]:
        value = batch[name] if name in batch else tr.params[name]
        env[symbol(name, n.shape)] = np.reshape(value, [BATCH if s == B else int(s) for s in
                                                        (symbol(name, n.shape).shape if n.shape else ())])
    checked = 0
    for eq in eqs.entries:
        env[eq.lhs] = evaluate(eq.rhs, env)
        if isinstance(eq.lhs, (D.Grad, D.SGrad)):
            name = eq.lhs.args[1].name
            want = tr.gradients(**batch)[name]
            got = np.broadcast_to(env[eq.lhs], np.shape(want) if np.ndim(env[eq.lhs]) == 0 else np.shape(env[eq.lhs]))
            np.testing.assert_allclose(np.reshape(got, want.shape), want, rtol=1e-9, atol=1e-12,
                                       err_msg=f"equation ({eq.number}) {eq.text()}")
            checked += 1
        elif eq.lhs == sp.Symbol("L"):
            assert np.isclose(env[eq.lhs], tr.loss(**batch), rtol=1e-10), eq.text()
    return checked


# -- the README's MLP ------------------------------------------------------------------------

def test_mlp_text_reads_as_matrix_equations():
    eqs = sb.derive(readme_mlp()).equations()
    text = str(eqs)
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*\(\d+\)", ln)]
    assert 6 <= len(lines) <= 12, text
    assert [int(re.match(r"\((\d+)\)", ln).group(1)) for ln in lines] == list(range(1, len(lines) + 1))
    assert text.index("forward") < text.index("backward") < text.index("gradients")
    for piece in ["Z₁ = x W1 + b1", "H₁ = tanh(Z₁)", "Z₂ = H₁ W2 + b2", "log_softmax_j(Z₂)",
                  "δZ₂ = (softmax_j(Z₂) − onehot(y))/B", "δZ₁ = (δZ₂ W2ᵀ) ⊙ (1 − H₁⊙H₁)",
                  "∂L/∂W1 = xᵀ δZ₁", "∂L/∂b1 = Σ_batch δZ₁", "∂L/∂W2 = H₁ᵀ δZ₂", "∂L/∂b2 = Σ_batch δZ₂"]:
        assert piece in text, f"{piece!r} missing from:\n{text}"
    assert eqs.text() == text and repr(eqs) == text


def balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0 and tex.count(r"\left") == tex.count(r"\right") and \
        tex.count(r"\begin{") == tex.count(r"\end{")


def test_mlp_latex_is_well_formed():
    eqs = sb.derive(readme_mlp()).equations()
    tex = eqs.latex()
    assert tex.startswith(r"\begin{align*}") and tex.endswith(r"\end{align*}")
    shown = eqs._repr_latex_()
    assert shown.startswith("$$\\begin{aligned}") and shown.endswith("\\end{aligned}$$") and balanced(shown)
    assert "&& (10)" in shown and r"\tag" not in shown
    assert balanced(tex) and tex.isascii(), tex
    for piece in [r"W_{1}", r"\tanh", r"^{\top}", r"\odot", r"\sum_{\text{batch}} \delta Z_{1}",
                  r"\frac{\partial L}{\partial W_{1}}", r"\tag{1}", r"\delta Z_{2} &= \frac{"]:
        assert piece in tex, f"{piece!r} missing from:\n{tex}"
    assert tex.count(r"\tag{") == len(eqs) == tex.count("&=")


def test_entries_point_at_graph_nodes():
    d = sb.derive(readme_mlp())
    eqs = d.equations()
    assert [e.number for e in eqs.entries] == list(range(1, len(eqs) + 1))
    for name, g in d.grads.items():
        e = eqs.entries[eqs.number(g) - 1]
        assert e.section == "gradients" and e.node == g.id and str(e.lhs.args[1]) == name
    assert eqs.number(d.loss) is not None and eqs.number(d.params["W1"]) is None
    assert all(e.node in e.nodes for e in eqs.entries)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_equations_compute_the_gradients(name, rng):
    m = MODELS[name]()
    eqs = sb.derive(m).equations()
    assert check_values(m, eqs, random_batch(m, rng)) == len(m.params)


def test_named_layers_and_outputs_name_equations():
    text = str(sb.derive(dense_mse()).equations())
    for piece in ["fc1_z = x fc1_W + fc1_b", "= relu(fc1_z)", "σ(fc2_z)", "δfc1_z = (δfc2_z fc2_Wᵀ) ⊙ 𝟙[fc1 > 0]",
                  "δfc2_z = (δZ₁ out_Wᵀ) ⊙ fc2 ⊙ (1 − fc2)"]:
        assert piece in text, f"{piece!r} missing from:\n{text}"
    assert "probs = softmax_j(" in str(sb.derive(softmax_slices()).equations())


def test_general_softmax_backward_when_logits_are_shared():
    text = str(sb.derive(shared_logits()).equations())
    assert "softmax_j(" not in text.split("backward")[1]  # the special case must not apply
    assert "δA₁ = −onehot(y)/B" in text


# -- every registered op ---------------------------------------------------------------------

@pytest.mark.parametrize("name", op_names())
def test_every_op_renders(name, rng):
    m, batch, params = op_model(name, rng)
    eqs = sb.derive(m).equations()
    text, tex = eqs.text(), eqs.latex()
    assert len(eqs) >= 1 + len(m.params)
    for p in m.params:
        assert f"∂L/∂{p} = " in text
    assert balanced(tex) and tex.isascii(), tex
    assert "Lambda" not in text and "lambda" not in tex


@pytest.mark.parametrize("name", op_names())
def test_every_op_equations_compute_the_gradients(name, rng):
    m, batch, params = op_model(name, rng)
    d = sb.derive(m)
    if any(len(shape) > 2 for _, shape in d.graph().nodes(data="shape")):
        pytest.skip("3-D tensors are shown flattened; their values are not checked here")
    assert check_values(m, d.equations(), batch, params) == len(m.params)


def test_output_is_deterministic():
    first = sb.derive(readme_mlp()).equations()
    second = sb.derive(readme_mlp()).equations()
    assert first.text() == second.text() and first.latex() == second.latex()
    # another process, another hash seed: nothing may depend on set order or node ids
    root = Path(__file__).parent.parent
    code = "from tests.test_equations import *; e = sb.derive(shared_logits()).equations(); print(e, e.latex())"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    here = sb.derive(shared_logits()).equations()
    assert out.stdout == f"{here} {here.latex()}\n"


def test_readme_sample_is_current():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    sample = readme.split("## Reading the equations", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert sample.rstrip("\n") == str(sb.derive(readme_mlp()).equations())


def test_without_recorded_cotangents_the_deltas_get_plain_names(rng):
    m = readme_mlp()
    d = sb.derive(m)
    bare = dataclasses.replace(d, _backward=(d.grads, {}))  # the same gradients, no cotangents recorded
    text = str(bare.equations())
    assert "δ" not in text and "G₁" in text and "∂L/∂W1 = xᵀ " in text


def test_an_ops_own_show_rule_is_used_and_unknown_ops_read_as_calls(monkeypatch):
    from symbp import notation
    from symbp.registry import OPS

    monkeypatch.setitem(OPS, "dot", dataclasses.replace(OPS["dot"], show=lambda args, n: D.func(
        "mm", notation.dshape(n.shape), *args)))
    text = str(sb.derive(readme_mlp()).equations())
    assert "Z₁ = mm(x, W1) + b1" in text and "∂L/∂W1 = mm(x, δZ₁)" in text
    monkeypatch.setitem(OPS, "dot", dataclasses.replace(OPS["dot"], show=None))
    text = str(sb.derive(readme_mlp()).equations())
    assert "Z₁ = dot(x, W1) + b1" in text
