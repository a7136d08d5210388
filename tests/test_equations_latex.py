"""The equations' LaTeX compiles (pdflatex, amsmath only) for every kind of model, and the text
of recurrent models reads right: transposes kept, no index used twice."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import symbp as sb


def rnn(layer: str) -> sb.Model:
    m = sb.Model(f"seq_{layer.lower()}")
    s = m.input("s", (6, 3))
    y = m.input("y", (6,), dtype="int64")
    h = getattr(sb.layers, layer)(16, name="rec")(m, s)
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(4, name="out")(m, h), y))
    return m


def cnn() -> sb.Model:
    m = sb.Model("cnn")
    x = m.input("x", (8, 8, 1))
    y = m.input("y", (), dtype="int64")
    h = sb.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(m, x)
    h = sb.layers.Flatten(name="flat")(m, sb.layers.MaxPool2D(2, name="pool")(m, h))
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(3, name="out")(m, h), y))
    return m


def mlp() -> sb.Model:
    m = sb.Model("mlp")
    x = m.input("x", (4,))
    y = m.input("y", (), dtype="int64")
    h = sb.layers.Dense(8, activation="relu", name="fc1")(m, x)
    m.minimize(sb.softmax_cross_entropy(sb.layers.Dense(3, name="fc2")(m, h), y))
    return m


MODELS = {"SimpleRNN": lambda: rnn("SimpleRNN"), "LSTM": lambda: rnn("LSTM"), "GRU": lambda: rnn("GRU"),
          "cnn": cnn, "mlp": mlp}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (apt-get install "
                    "texlive-latex-base texlive-latex-recommended) to compile the equations' LaTeX")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_latex_compiles_with_amsmath_alone(name, tmp_path):
    eqs = sb.derive(MODELS[name]()).equations()
    body = f"{eqs.latex()}\n\n{eqs._repr_latex_()}\n"  # print form and the notebook's
    doc = "\\documentclass{article}\n\\usepackage{amsmath}\n\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "eqs.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "eqs.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stdout.splitlines() if line.startswith("!")]
    assert done.returncode == 0 and (tmp_path / "eqs.pdf").exists(), "\n".join(errors) or done.stdout[-2000:]


def test_a_slice_in_a_recurrence_is_one_subscript():
    tex = sb.derive(rnn("LSTM")).equations().latex()
    assert re.search(r"\{a_\{1\}\}_\{\[:, 16:32\]\}", tex)  # LSTM gates: slices of the pre-activations
    assert not re.search(r"_\{[^{}]*\}_\{", tex)  # a_{1}_{[16:32]}: "Double subscript"


def test_latex_needs_no_amssymb():
    tex = sb.derive(cnn()).equations().latex()
    assert "\\mathbf{1}\\left[" in tex and "\\mathbb" not in tex  # the ReLU's derivative


def test_recurrent_text_keeps_transposes_and_indices_apart():
    text = sb.derive(rnn("SimpleRNN")).equations().text()
    # the scan's incoming gradient reads as a call (3-D operand), but keeps the transpose
    assert "dot(δout_z, out_Wᵀ)" in text
    # sum over batch and time around the class sum Σ_j: not Σ_batch,j(−Σ_j ...)
    assert "L     = Σ_batch,axis1(−Σ_j(onehot(y) ⊙ log_softmax_j(out_z)))/(6·B)" in text
    assert "Σ_batch,j" not in text


def test_activations_are_named_by_strings():
    names = sorted(sb.layers.ACTIVATIONS)
    assert "relu" in names and "linear" in names and all(isinstance(k, str) for k in names)
    m = sb.Model("linear")
    x = m.input("x", (3,))
    assert sb.layers.Dense(2, activation=None, name="d")(m, x).shape == (None, 2)  # None still means linear
    with pytest.raises(sb.SymbpError, match="unknown activation 'nope'; choose from linear, tanh"):
        sb.layers.Dense(2, activation="nope", name="e")(m, x)
