"""CTC loss (issue 11): ``sb.ctc_loss`` against references written from the definition.

torch is not a dependency, so the references follow PyTorch's ``ctc_loss`` semantics
(blank 0, reduction "mean": each example's nll / max(label length, 1), then the batch mean)
from the definition: a brute force over every alignment for tiny sizes, and a NumPy
log-space forward algorithm for bigger ones. Gradients are checked against finite
differences on both backends; Cython is checked against NumPy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import symbp as sb
from symbp.ir import SymbpError, topo_order

BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("Cython"), reason="needs Cython"))]


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _collapse(path):
    """An alignment's label sequence: merge repeats, then drop blanks."""
    return tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))


def brute_force_nll(logits, label, steps):
    """-log of the summed probability of every alignment (C**steps paths) that collapses to label."""
    lp = _log_softmax(logits[:steps])
    total = 0.0
    for path in itertools.product(range(lp.shape[1]), repeat=steps):
        if _collapse(path) == tuple(label):
            total += np.exp(sum(lp[t, c] for t, c in enumerate(path)))
    return -np.log(total)


def forward_nll(logits, label, steps):
    """The alpha recursion in log space over blank, l1, blank, ..., lS, blank (Graves 2006)."""
    lp = _log_softmax(logits[:steps])
    ext = [0]
    for c in label:
        ext += [int(c), 0]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = lp[0, 0]
    if len(ext) > 1:
        alpha[1] = lp[0, ext[1]]
    for t in range(1, steps):
        new = np.full_like(alpha, -np.inf)
        for s in range(len(ext)):
            terms = [alpha[s]] + ([alpha[s - 1]] if s else [])
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = np.logaddexp.reduce(terms) + lp[t, ext[s]]
        alpha = new
    return -np.logaddexp.reduce(alpha[-2:] if len(ext) > 1 else alpha[-1:])


def reference_loss(nll, X, Y, XL, YL):
    """PyTorch's reduction "mean": per-example nll / max(label length, 1), averaged."""
    per = [nll(X[b], Y[b, :YL[b]], XL[b]) / max(YL[b], 1) for b in range(len(X))]
    return float(np.mean(per))


def ctc_model(T, C, S):
    m = sb.Model("ctc")
    x = m.input("x", (T, C))
    labels = m.input("labels", (S,), dtype="int64")
    xl = m.input("xl", (), dtype="int64")
    yl = m.input("yl", (), dtype="int64")
    logits = x @ m.param("W", (C, C), init="orthogonal") + m.param("b", (C,), init="zeros")
    m.minimize(sb.ctc_loss(logits, labels, xl, yl))
    return m


def batch(rng, B, T, C, S, XL, YL, labels=None):
    Y = rng.integers(1, C, (B, S)) if labels is None else np.array(labels)
    for b in range(B):
        Y[b, YL[b]:] = 0      # padding past the length is ignored
    return {"x": rng.normal(size=(B, T, C)), "labels": Y, "xl": np.array(XL), "yl": np.array(YL)}


def compiled(backend, T, C, S):
    return sb.compile(sb.derive(ctc_model(T, C, S)), backend=backend, dtype="float64", seed=0)


def logits_of(tr, d):
    return d["x"] @ tr.params["W"] + tr.params["b"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_sum_over_every_alignment(backend, rng):
    # Repeated labels (1, 1) need a blank between them: 3 steps is the least that fits them;
    # lengths vary in the batch, and an empty label sequence is the all-blank path.
    T, C, S = 4, 3, 2
    d = batch(rng, 5, T, C, S, [4, 3, 4, 2, 3], [2, 2, 1, 2, 0], labels=[[1, 1], [1, 1], [2, 0], [1, 2], [0, 0]])
    tr = compiled(backend, T, C, S)
    want = reference_loss(brute_force_nll, logits_of(tr, d), d["labels"], d["xl"], d["yl"])
    assert tr.loss(**d) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_forward_algorithm_with_variable_lengths(backend, rng):
    T, C, S, B = 20, 6, 5, 6
    XL, YL = [20, 17, 12, 20, 9, 15], [5, 3, 4, 1, 2, 5]
    d = batch(rng, B, T, C, S, XL, YL)
    d["labels"][0, :3] = [2, 2, 2]          # runs of a repeated label
    tr = compiled(backend, T, C, S)
    lg = logits_of(tr, d)
    assert reference_loss(forward_nll, lg[:2, :4], d["labels"][:2], [4, 4], [2, 2]) == pytest.approx(
        reference_loss(brute_force_nll, lg[:2, :4], d["labels"][:2], [4, 4], [2, 2]), rel=1e-12)  # the two agree
    assert tr.loss(**d) == pytest.approx(reference_loss(forward_nll, lg, d["labels"], d["xl"], d["yl"]), rel=1e-12)
    # Steps past an example's length and labels past its label length change nothing.
    d2 = {**d, "x": d["x"].copy(), "labels": d["labels"].copy()}
    d2["x"][2, 12:] = rng.normal(size=(T - 12, C))
    d2["labels"][1, 3:] = C - 1
    assert tr.loss(**d2) == pytest.approx(tr.loss(**d), rel=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(backend, rng):
    T, C, S = 7, 4, 3
    d = batch(rng, 4, T, C, S, [7, 5, 6, 7], [3, 2, 3, 1], labels=[[1, 1, 2], [3, 3, 0], [2, 1, 2], [1, 0, 0]])
    result = sb.gradcheck(ctc_model(T, C, S), d, backend=backend)
    assert result.ok, str(result)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cython_at_the_default_flags_equals_numpy(dtype, rng, monkeypatch):
    """What users run: -O3 -march=native; loss and gradients over two steps of Adam."""
    pytest.importorskip("Cython")
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    from tests.test_cython import close

    T, C, S = 16, 5, 4
    d = batch(rng, 5, T, C, S, [16, 10, 13, 16, 8], [4, 2, 3, 4, 1])
    d["labels"][1, :2] = [3, 3]
    der = sb.derive(ctc_model(T, C, S))
    kw = dict(dtype=dtype, seed=0, optimizer=sb.optim.Adam(lr=1e-2))
    ref, cy = sb.compile(der, backend="numpy", **kw), sb.compile(der, backend="cython", **kw)
    for _ in range(2):
        close(np.array(cy.loss(**d)), np.array(ref.loss(**d)), dtype, "loss")
        g_ref, g_cy = ref.gradients(**d), cy.gradients(**d)
        for k in g_ref:
            close(g_cy[k], g_ref[k], dtype, f"gradient of {k}")
        ref.step(**d)
        cy.step(**d)
    from codegen.runtime.trainer import DataError

    d["labels"][2, 2] = 0  # a blank within the label length (3) of example 2: the check's C at -O3
    for tr in (ref, cy):
        with pytest.raises(DataError, match=r"input 'labels': label 0 is outside 1\.\.4"):
            tr.loss(**d)


def test_an_impossible_alignment_gives_a_huge_finite_loss(rng):
    # torch gives inf (zero_infinity=False); kernels refuse non-finite constants, so log 0 is
    # -1e30 here and the loss says "impossible" by its size. Repeats (1, 1) need 3 steps.
    T, C, S = 4, 3, 2
    tr = compiled("numpy", T, C, S)
    d = batch(rng, 1, T, C, S, [2], [2], labels=[[1, 1]])
    assert 1e29 < tr.loss(**d) < 1e31
    d = batch(rng, 1, T, C, S, [3], [2], labels=[[1, 1]])
    assert tr.loss(**d) < 100


def test_trains_in_float32(rng):
    T, C, S = 10, 4, 3
    m = ctc_model(T, C, S)
    tr = sb.compile(sb.derive(m), backend="numpy", optimizer=sb.optim.Adam(lr=0.05), dtype="float32", seed=0)
    d = batch(rng, 8, T, C, S, [10] * 8, [3] * 8)
    first = tr.step(**d)
    for _ in range(30):
        last = tr.step(**d)
    assert np.isfinite(last) and last < first


def test_bad_arguments_are_named_when_the_graph_is_built():
    m = sb.Model("bad")
    x, x2 = m.input("x", (5, 4)), m.input("x2", (5,))
    y, yf = m.input("y", (3,), dtype="int64"), m.input("yf", (3,))
    n, n2 = m.input("n", (), dtype="int64"), m.input("n2", (2,), dtype="int64")
    cases = [((x2, y, n, n), r"logits input 'x2' must be float of shape \(batch, T, classes\)"),
             ((x, yf, n, n), r"labels input 'yf' must be int64 of shape \(batch, S\), padded, got float"),
             ((x, y, n2, n), r"logit_lengths input 'n2' must be int64 of shape \(batch,\)"),
             ((x, y, n, x2), r"label_lengths input 'x2' must be int64"),
             ((x, y, n, 3), r"label_lengths must be a symbolic tensor, got int"),
             ((m.input("x1", (5, 1)), y, n, n), r"at least 2 classes \(class 0 is the blank\)")]
    for args, msg in cases:
        with pytest.raises(SymbpError, match=msg):
            sb.ctc_loss(*args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values_are_named_at_run_time(backend, rng):
    from codegen.runtime.trainer import DataError

    T, C, S = 5, 3, 2
    tr = compiled(backend, T, C, S)
    good = batch(rng, 2, T, C, S, [5, 4], [2, 1])
    blank = "the classes ctc_loss takes within an example's label_lengths"
    for name, value, text in [
            ("labels", [[1, 3], [1, 0]], r"input 'labels' has labels outside 0\.\.2"),
            ("labels", [[1, -1], [1, 0]], r"input 'labels' has labels outside 0\.\.2"),
            ("labels", [[1, 0], [1, 0]], rf"input 'labels': label 0 is outside 1\.\.2, {blank} \(0 is the blank"),
            ("labels", [[1, 2], [0, 2]], rf"input 'labels': label 0 is outside 1\.\.2, {blank}"),
            ("xl", [6, 4], r"input 'xl': length 6 is outside 0\.\.5, the lengths of ctc_loss's logits \(5 steps\)"),
            ("yl", [3, 1], r"input 'yl': length 3 is outside 0\.\.2, the lengths of ctc_loss's labels \(2 pos"),
            ("yl", [2, -1], r"input 'yl': length -1 is outside 0\.\.2")]:
        bad = {**good, name: np.array(value)}
        for call in (tr.loss, tr.step):
            with pytest.raises(DataError, match=text):
                call(**bad)
    assert tr.t == 0  # no step was taken
    good["labels"][1, 1] = 0  # a blank past the label length is padding
    tr.loss(**good)


def test_the_speech_example_learns_from_label_sequences_alone(capsys):
    from tests.helpers import example as load

    example = load("ctc_speech")
    assert example.edit_distance([1, 2, 2, 3], [1, 2, 3]) == 1 and example.greedy(
        np.array([[0, 1], [0, 1], [1, 0], [0, 1]]), 4) == [1, 1]
    rate = example.main(steps=80, T=16, S=3, phonemes=4, hidden=16, batch=16)
    assert rate < 0.3              # chance would be far above 50 %
    assert "decoded" in capsys.readouterr().out


def test_the_graph_does_not_grow_with_the_lengths():
    # One scan over T and whole-tensor ops over the 2S+1 states: nothing is per step or per label.
    def size(T, S):
        d = sb.derive(ctc_model(T, 4, S))
        return len(topo_order([d.loss, *d.grads.values()])), len(str(d.equations()).splitlines())

    assert size(5, 2) == size(60, 25)
