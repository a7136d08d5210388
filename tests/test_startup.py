"""Starting without SymPy: ``import symbp`` loads neither SymPy nor networkx, building a model
records formulas without building them, and a start from the compiled-module cache (keyed on
the forward graph) neither derives nor generates code. The key still tells models apart."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import symbp as sb
from codegen import Spec
from codegen.cython import build
from codegen.cython.cache import graph_key
from symbp.ir import topo_order
from symbp.ops import scalar as S
from symbp.ops.elementwise import Formula
from symbp.registry import OPS
from tests.helpers import README_MLP

MLP = textwrap.dedent("""
    import json, sys
    import numpy as np
    import symbp as sb

""") + README_MLP + textwrap.dedent("""
    d = sb.derive(m)
    built = "sympy" in sys.modules
    tr = sb.compile(d, backend="cython", optimizer=sb.optim.SGD(lr=0.1), dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    loss = tr.step(x=rng.standard_normal((8, 64)).astype(np.float32), y=rng.integers(0, 10, 8))
    print(json.dumps({"loss": loss, "sympy_after_derive": built,
                      "loaded": [k for k in ("sympy", "networkx") if k in sys.modules]}))
""")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_symbp_loads_neither_sympy_nor_networkx():
    loaded = run("import sys, symbp; print([k for k in ('sympy', 'networkx', 'codegen') if k in sys.modules])")
    assert loaded.strip() == "[]"


def test_a_warm_start_never_derives_nor_imports_sympy():
    cold = json.loads(run(MLP))  # builds the module (or finds it) in the session's cache
    warm = json.loads(run(MLP))
    assert not warm["sympy_after_derive"] and warm["loaded"] == []
    assert warm["loss"] == cold["loss"]


def mlp(act=sb.tanh, width=8, name="keyed"):
    m = sb.Model(name)
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    h = act(x @ m.param("W1", (5, width)) + m.param("b1", (width,)))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (width, 3)), y))
    return sb.derive(m)


def key(d=None, optimizer=None, dtype="float32"):
    return graph_key(Spec(d or mlp(), optimizer or sb.optim.SGD(lr=0.1), dtype))


def test_the_key_tells_apart_what_changes_the_code():
    base = key()
    assert key() == base  # same model, built again: the same key
    assert key(optimizer=sb.optim.SGD(lr=0.5)) == base  # a hyperparameter's value is a run-time input
    differ = [key(mlp(sb.sigmoid)), key(mlp(width=9)), key(mlp(name="other")),
              key(mlp(lambda z: sb.tanh(2 * z))), key(mlp(lambda z: sb.tanh(3 * z))),
              key(optimizer=sb.optim.Adam()), key(optimizer=sb.optim.SGD(lr=0.1, clip_norm=1.0)),
              key(dtype="float64")]
    assert len({base, *differ}) == 1 + len(differ)
    # reading the equations builds the formulas; the key is the same either way
    d = mlp()
    d.equations()
    assert key(d) == base
    # flags are part of the index's key (build.lookup / remember)
    assert build.cache_key(base, ("-O1",)) != build.cache_key(base, ("-O2",))


def test_a_model_differing_only_in_a_formula_misses_the_cache(rng):
    """End to end: after tanh's model is cached, sigmoid's must build its own module."""
    data = {"x": rng.standard_normal((4, 5)), "y": rng.integers(0, 3, 4)}
    for act in (sb.tanh, sb.sigmoid):
        got = sb.compile(mlp(act), backend="cython", dtype="float64").loss(**data)
        want = sb.compile(mlp(act), backend="numpy", dtype="float64").loss(**data)
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("op", sorted(k for k, o in OPS.items() if o.kind == "elementwise" and o.formula))
def test_a_deferred_formula_is_the_one_built_at_once(op):
    """``apply`` defers a formula only when SymPy would have nothing to simplify: the formula
    of distinct symbols must mention each and be more than one of them."""
    od = OPS[op]
    n = od.sample["arity"]
    expr = od.formula(*S.symbols(n))
    assert all(expr.has(x) for x in S.symbols(n)) and not expr.is_Symbol
    attrs = Formula(op, n)
    assert not attrs.built()
    assert attrs["expr"] == expr and attrs.built()
    assert dict(Formula(op, n)) == {"expr": expr} == {**Formula(op, n)}
    assert Formula(op, n) == {"expr": expr} and {"expr": expr} == Formula(op, n) == Formula(op, n)
    assert not Formula(op, n) != {"expr": expr}


def test_graphs_with_deferred_formulas_derive_right(rng):
    d = mlp()
    assert any(isinstance(n.attrs, Formula) for n in topo_order([d.loss]))
    x = {"x": rng.standard_normal((3, 5)), "y": rng.integers(0, 3, 3)}
    assert sb.gradcheck(d, x).ok


def test_the_schedule_is_networkxs_lexicographic_topological_order():
    """The schedule orders nodes by id (creation order); networkx's lexicographical topological
    sort, which it used to call, gives the same order on a recurrent model's optimised graph."""
    import networkx as nx

    from symbp.autodiff.optimise import optimise
    from symbp.autodiff.schedule import schedule
    from symbp.ir import to_networkx

    m = sb.Model("lstm")
    x, y = m.input("x", (4, 3)), m.input("y", (4,), dtype="int64")
    hs = sb.layers.LSTM(5)(x)
    m.minimize(sb.softmax_cross_entropy(hs @ m.param("V", (5, 3)), y) + sb.sum(m.param("W", (2, 2)) ** 2))
    d = sb.derive(m)
    roots = optimise([d.loss, *d.grads.values()])
    g = to_networkx(roots)
    want = [g.nodes[i]["node"] for i in nx.lexicographical_topological_sort(g, key=lambda i: i)]
    assert schedule(roots).order == [n for n in want if n.op not in ("input", "param")]
