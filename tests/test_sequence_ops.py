"""Sequence ops: embedding lookups, one-hot/argmax, batched contractions (issue 11).

The registry's parametrised tests check each op's derivative and backend agreement on its
sample; these check what the samples cannot: an embedding equals a one-hot product without
building one, ids out of range are errors naming the input wherever the generated code reads
them, every contraction layout against ``np.einsum``, the Cython backend at the flags users
run, and the errors for operands that do not fit.
"""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.trainer import DataError
from symbp.ir import topo_order

V, D, T = 7, 3, 4
BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("Cython"), reason="needs Cython"))]


def lm(lookup: str) -> sb.Model:
    """A tiny sequence model whose input side is an Embedding or the one-hot product it replaces."""
    m = sb.Model("lm")
    ids, y = m.input("ids", (T,), dtype="int64"), m.input("y", (), dtype="int64")
    if lookup == "embedding":
        e = sb.layers.Embedding(V, D, name="emb")(ids)
    else:
        e = sb.one_hot(ids, V) @ m.param("emb_W", (V, D), init="uniform")
    h = sb.tanh(e)                                                  # (batch, T, D)
    logits = sb.sum(h, axis=1) @ m.param("out_W", (D, V))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_equals_the_one_hot_product_without_building_one(backend, rng):
    batch = {"ids": rng.integers(0, V, (5, T)), "y": rng.integers(0, V, 5)}
    d = sb.derive(lm("embedding"))
    nodes = topo_order([d.loss, *d.grads.values()])
    assert {"gather", "scatter_add"} <= {n.op for n in nodes}
    assert all(n.inputs[0].name == "y" for n in nodes if n.op == "onehot")  # the labels' only
    te = sb.compile(d, backend=backend, dtype="float64", seed=3)
    to = sb.compile(sb.derive(lm("one_hot")), backend=backend, dtype="float64", params=dict(te.params))
    np.testing.assert_allclose(te.loss(**batch), to.loss(**batch), rtol=1e-12)
    ge, go = te.gradients(**batch), to.gradients(**batch)
    for k in ge:
        np.testing.assert_allclose(ge[k], go[k], rtol=1e-10, atol=1e-14, err_msg=k)
    if backend == "numpy":  # the lookup reads rows, its gradient adds rows: one one-hot (the labels')
        from codegen import emit
        from codegen.spec import Spec

        source = emit(Spec(d, sb.optim.SGD(lr=0.1), "float64"), "numpy")
        assert "np.take(" in source and "np.add.at(" in source
        assert source.count("put_along_axis") == 2  # y's one-hot, in gradients() and loss()


def test_embedding_layer_called_on_a_tensor_or_with_its_model():
    m = sb.Model("calls")
    ids = m.input("ids", (T,), dtype="int64")
    layer = sb.layers.Embedding(V, D, name="tok")
    a, b = layer(ids), layer(m, ids[:, :2])
    assert a.shape == (None, T, D) and b.shape == (None, 2, D) and list(m.params) == ["tok_W"]
    grid = m.input("grid", (2, 3), dtype="int64")                     # ids of any per-example shape
    assert sb.embedding(grid, m.params["tok_W"]).shape == (None, 2, 3, D)
    with pytest.raises(sb.SymbpError, match="layer 'tok': expects int64 ids, got input 'x'"):
        layer(m.input("x", (T,)))
    with pytest.raises(sb.SymbpError, match="vocabulary must be a positive int"):
        sb.layers.Embedding(0, D)


def bad_ids_models():
    """Ids reaching a lookup directly, sliced, concatenated, and read inside a loop."""
    def direct(m, E):
        return sb.embedding(m.input("ids", (T,), dtype="int64"), E)

    def sliced(m, E):
        return sb.embedding(m.input("ids", (T,), dtype="int64")[:, 1:], E)

    def concatenated(m, E):
        a, b = m.input("a", (2,), dtype="int64"), m.input("ids", (2,), dtype="int64")
        return sb.embedding(sb.concat([a, b], axis=1), E)

    def in_a_loop(m, E):
        ids = m.input("ids", (T,), dtype="int64")
        _, hs = sb.scan(lambda h, i_t: (sb.tanh(sb.embedding(i_t, E) + h),) * 2, ids, sb.zeros((D,)))
        return hs
    return {"direct": (direct, "input 'ids'"), "sliced": (sliced, "input 'ids'"),
            "concatenated": (concatenated, "inputs 'a', 'ids'"), "in_a_loop": (in_a_loop, "input 'ids'")}


@pytest.fixture(scope="module")
def bad_ids_trainers():
    out = {}
    for case, (build, named) in bad_ids_models().items():
        m = sb.Model(f"ids_{case}")
        E = m.param("E", (V, D))
        m.minimize(sb.mean(build(m, E) ** 2))
        d = sb.derive(m)
        for backend in ("numpy", "cython"):
            out[case, backend] = sb.compile(d, backend=backend, dtype="float64"), named
    return out


@pytest.mark.parametrize("case", list(bad_ids_models()))
@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("bad", [V, -1, 10**12])
def test_ids_out_of_range_are_errors_naming_the_input(bad_ids_trainers, case, backend, bad, rng):
    tr, named = bad_ids_trainers[case, backend]
    batch = {k: rng.integers(0, V, (3, *tr.kernels.INPUTS[k][0][1:])) for k in tr.kernels.INPUTS}
    tr.loss(**batch)
    batch["ids"][2, -1] = bad
    before = {k: v.copy() for k, v in tr.params.items()}
    for call in (tr.loss, tr.gradients, tr.step):
        with pytest.raises(DataError, match=rf"^{named}: id {bad} is outside 0..{V - 1}, the rows of the embedding "
                                            "table 'E'$"):
            call(**batch)
    assert all(np.array_equal(tr.params[k], before[k]) for k in before)  # nothing ran on a bad id


# -- batched contractions ---------------------------------------------------------------------

SPECS = {  # spec: (per-example shapes of the two operands)
    "btd,bsd->bts": ((4, 3), (5, 3)),          # attention scores
    "bts,bsd->btd": ((4, 5), (5, 3)),          # attention-weighted values
    "btd,bsd->bst": ((4, 3), (5, 3)),          # result transposed: computed, then copied in place
    "bhtd,bhsd->bhts": ((2, 4, 3), (2, 5, 3)),  # two batch letters (heads): dense copies
    "bt,btd->bd": ((4,), (4, 3)),              # no row letter
    "btd,bd->bt": ((4, 3), (3,)),              # no column letter
    "bdt,bds->bts": ((3, 4), (3, 5)),          # contracted axis first: transposed BLAS operands
}


def contractions() -> tuple[sb.Model, dict]:
    """Every layout in SPECS, plus q @ k on strided and transposed views, and argmax."""
    m = sb.Model("contract")
    rng = np.random.default_rng(7)
    batch, terms = {}, []
    for k, (spec, (sa, sb_)) in enumerate(SPECS.items()):
        x, y = m.input(f"x{k}", sa), m.input(f"y{k}", sb_)
        p, q = m.param(f"p{k}", sa), m.param(f"q{k}", sb_)
        out = sb.einsum(spec, sb.tanh(x * p), y * q)
        m.output(f"e{k}", out)
        terms.append(sb.mean(out * out))
        batch[f"x{k}"], batch[f"y{k}"] = rng.normal(size=(6, *sa)), rng.normal(size=(6, *sb_))
    s = m.input("s", (6, 4))
    W = m.param("W", (6, 4))
    a = (s * W)[:, ::2]                                                  # (batch, 3, 4), strided
    mm = a @ sb.transpose(s * W, (0, 2, 1))                              # (batch, 3, 6)
    m.output("mm", mm)
    x = m.input("x", (5,))
    m.output("arg", sb.argmax(x))
    terms.append(sb.mean(mm * mm) + sb.mean(sb.one_hot(sb.argmax(x), 5) * (x * m.param("u", (5,)))))
    batch["s"] = rng.normal(size=(6, 6, 4))
    batch["x"] = np.repeat(rng.integers(0, 3, (6, 1)), 5, axis=1).astype(float)
    batch["x"][:, 1:4] += rng.integers(0, 2, (6, 3))                     # ties between maxima
    m.minimize(sum(terms[1:], terms[0]))
    return m, batch


def test_contractions_equal_np_einsum(rng):
    m, batch = contractions()
    tr = sb.compile(sb.derive(m), dtype="float64", seed=2)
    got = tr.predict(**batch)
    for k, spec in enumerate(SPECS):
        x = np.tanh(batch[f"x{k}"] * tr.params[f"p{k}"])
        np.testing.assert_allclose(got[f"e{k}"], np.einsum(spec, x, batch[f"y{k}"] * tr.params[f"q{k}"]),
                                   rtol=1e-12, err_msg=spec)
    sw = batch["s"] * tr.params["W"]
    np.testing.assert_allclose(got["mm"], sw[:, ::2] @ sw.transpose(0, 2, 1), rtol=1e-12)
    assert got["arg"].dtype == np.int64 and np.array_equal(got["arg"], np.argmax(batch["x"], axis=-1))
    assert sb.gradcheck(sb.derive(m), batch).ok


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cython_sequence_ops_match_numpy_at_default_flags(monkeypatch, dtype):
    """What users run: -O3 -march=native. Contractions, argmax ties, and lookups whose ids
    repeat (scatter-add must add, not overwrite), over two steps of Adam."""
    pytest.importorskip("Cython")
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    from tests.test_cython import close

    m, batch = contractions()
    ids = m.input("ids", (T,), dtype="int64")
    m.minimize(m.loss + sb.mean(sb.tanh(sb.layers.Embedding(V, D, name="emb")(m, ids)) ** 2))
    batch["ids"] = np.array([[0, 0, 0, 6], [1, 2, 1, 2], [6, 6, 5, 5], [3, 3, 3, 3], [4, 0, 4, 0], [1, 1, 1, 1]])
    d = sb.derive(m)
    kw = dict(dtype=dtype, seed=4, optimizer=sb.optim.Adam(lr=1e-2))
    tn, tc = sb.compile(d, backend="numpy", **kw), sb.compile(d, backend="cython", **kw)
    gn, gc = tn.gradients(**batch), tc.gradients(**batch)
    for k in gn:
        close(gc[k], gn[k], dtype, f"gradient of {k}")
    for _ in range(2):
        close(tc.step(**batch), tn.step(**batch), dtype, "step loss")
    pn, pc = tn.predict(**batch), tc.predict(**batch)
    for k in pn:
        if k == "arg":
            assert np.array_equal(pc[k], pn[k])
        else:
            close(pc[k], pn[k], dtype, f"output {k}")


def test_batched_operands_that_do_not_fit_are_named():
    m = sb.Model("bad")
    q, k2 = m.input("q", (4, 3)), m.input("k", (3,))
    with pytest.raises(sb.SymbpError, match=r"input 'q' \(batch, 4, 3\) and input 'k' \(batch, 3\): both must have "
                                            r"3 axes"):
        q @ k2
    with pytest.raises(sb.SymbpError, match=r"inner dimensions 3 and 5 differ"):
        q @ m.input("k5", (5, 2))
    with pytest.raises(sb.SymbpError, match="batch letter must come first"):
        sb.einsum("tbd,bsd->bts", q, q)
    with pytest.raises(sb.SymbpError, match=r"both operands must be batched.*"):
        sb.einsum("btd,bsd->bts", q, m.param("P", (1, 5, 3)))
    with pytest.raises(sb.SymbpError, match="axis 'd' has sizes 3 and 2"):
        sb.einsum("btd,bsd->bts", q, m.input("r", (5, 2)))
    with pytest.raises(sb.SymbpError, match="explicit output"):
        sb.einsum("btd,bsd", q, q)
    with pytest.raises(sb.SymbpError, match="ids must be an int64 tensor"):
        sb.embedding(q, m.param("E", (V, D)))
    with pytest.raises(sb.SymbpError, match="axis 0 is the batch axis"):
        sb.argmax(q, axis=0)


def test_contractions_and_lookups_read_well_in_the_equations():
    m = sb.Model("attn")
    ids = m.input("ids", (T,), dtype="int64")
    e = sb.layers.Embedding(V, D, name="emb")(ids)
    scores = e @ sb.transpose(e, (0, 2, 1))
    m.minimize(sb.mean(sb.einsum("bts,bsd->btd", sb.softmax(scores), e)))
    eqs = sb.derive(m).equations()
    text, tex = eqs.text(), eqs.latex()
    for piece in ["embed(emb_W, ids)", "einsum_bij,bjk→bik(", "einsum_bts,bsd→btd(", "∂L/∂emb_W = scatter_add("]:
        assert piece in text, f"{piece!r} missing from:\n{text}"
    assert r"\text{bts,bsd$\to$btd}" in tex and tex.isascii()
