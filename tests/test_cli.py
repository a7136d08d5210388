"""The `symbp` command on the example model files, its errors, and the DOT writer."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symbp as sb
from symbp import cli
from symbp.show import pictures

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "examples" / "mlp_model.py")  # defines `model`
DIGITS = str(ROOT / "examples" / "mlp_digits.py")  # defines `build()`


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, 64)), y=rng.integers(0, 10, 40))
    return tmp_path / "data.npz"


@pytest.mark.parametrize("command", ["equations", "graph", "build", "train", "gradcheck"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: symbp {command}" in capsys.readouterr().out


def test_top_level_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "symbp.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("equations", "graph", "build", "train", "gradcheck"):
        assert command in done.stdout


class FakeEquations:
    def __str__(self):
        return "dW1 = x^T delta1"

    def latex(self):
        return r"\frac{\partial L}{\partial W_1} = x^\top \delta_1"


def test_equations_command_prints_text_or_latex(capsys, monkeypatch):
    monkeypatch.setattr(sb.Derivation, "equations", lambda self: FakeEquations())
    assert run(capsys, "equations", MODEL)[:2] == (0, "dW1 = x^T delta1\n")
    assert run(capsys, "equations", MODEL, "--latex")[1].startswith(r"\frac{\partial L}")


def test_equations(capsys):
    pytest.importorskip("symbp.show.equations")
    code, out, _ = run(capsys, "equations", MODEL)
    assert code == 0 and out.strip() == str(cli.load_model(MODEL).equations()).strip()
    code, out, _ = run(capsys, "equations", MODEL, "--latex")
    assert code == 0 and out.strip() == cli.load_model(MODEL).equations().latex().strip()


def test_graph_dot(capsys, tmp_path):
    code, out, _ = run(capsys, "graph", MODEL)
    assert code == 0 and out.startswith('digraph "mlp (forward)" {') and out.rstrip().endswith("}")
    assert 'label="W1\\n(64, 32)"' in out and '"output probs\\n(batch, 10)"' in out and "d loss" not in out
    code, out, _ = run(capsys, "graph", DIGITS, "--backward", "-o", tmp_path / "g.dot")
    text = (tmp_path / "g.dot").read_text()
    assert code == 0 and "wrote" in out
    assert 'label="d loss / d fc1_W\\n(64, 128)"' in text and "#b91c1c" in text
    assert text == cli.load_model(DIGITS).dot(backward=True)  # deterministic: same model, same text


needs_dot = pytest.mark.skipif(not pictures.have_dot(), reason="the Graphviz 'dot' program is not installed "
                               "(CI installs it: apt-get install graphviz)")


@needs_dot
def test_graph_svg(capsys, tmp_path):
    code, out, _ = run(capsys, "graph", MODEL, "--format", "svg", "--backward", "-o", tmp_path / "g.svg")
    assert code == 0 and "<svg" in (tmp_path / "g.svg").read_text()
    assert "<svg" in cli.load_model(MODEL)._repr_svg_()


def test_graph_svg_without_graphviz(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no dot to find, for shutil.which and the graphviz package alike
    code, out, err = run(capsys, "graph", MODEL, "--format", "svg")
    assert code == 1 and out == ""
    assert "needs the Graphviz 'dot' program, which is not installed" in err and "--format dot" in err
    assert cli.load_model(MODEL)._repr_svg_() is None


def test_dot_quotes_every_label():
    nasty = 'a"b\\c\nd]; evil [shape=box\\'
    m = sb.Model("m")
    x = m.input("x", (2,))
    h = sb.tanh(x @ m.param("W", (2, 2)))
    h.label = nasty
    m.minimize(sb.sum(h))
    text = sb.derive(m).dot()
    # the label ends inside one DOT string: the quote escaped, the user's backslashes doubled
    assert r'[a\"b\\c\nd]; evil [shape=box\\]" fillcolor=' in text
    assert not any(line.lstrip().startswith("evil") for line in text.splitlines())
    if pictures.have_dot():
        svg = pictures.render_svg(text)
        assert "evil [shape=box\\]" in svg.replace("&#160;", " ")


def test_build(capsys, tmp_path):
    code, out, _ = run(capsys, "build", MODEL, "-o", tmp_path / "pkg", "--dtype", "float64", "--lr", "0.1")
    assert code == 0 and "pip install" in out and "python -m mlp --selftest" in out
    assert (tmp_path / "pkg" / "src" / "mlp" / "_kernels.py").read_text().count("DTYPE = np.float64") == 1
    assert "lr=0.1" in (tmp_path / "pkg" / "README.md").read_text()


def test_train(capsys, tmp_path, data, monkeypatch):
    code, out, _ = run(capsys, "train", MODEL, "--data", data, "--epochs", "2", "--batch-size", "16", "--quiet",
                       "--validation", data, "--out", tmp_path / "w.npz", "--checkpoint", tmp_path / "ck.npz")
    assert code == 0 and "trained 'mlp': 2 epochs, 6 steps" in out and "val_accuracy" in out
    with np.load(tmp_path / "w.npz") as f:
        assert f["W1"].shape == (64, 32)
    monkeypatch.chdir(tmp_path)  # without --out the weights go to <model>_trained.npz here
    code, out, _ = run(capsys, "train", MODEL, "--data", data, "--epochs", "3", "--batch-size", "16", "--quiet",
                       "--checkpoint", tmp_path / "ck.npz", "--resume")
    assert code == 0 and "3 epochs, 9 steps" in out and (tmp_path / "mlp_trained.npz").exists()


def test_train_with_schedule_and_early_stopping(capsys, tmp_path, data):
    """The flags make the fit that sb.schedules and sb.EarlyStopping make in Python."""
    code, out, _ = run(capsys, "train", MODEL, "--data", data, "--epochs", "30", "--batch-size", "16", "--quiet",
                       "--validation", data, "--lr-schedule", "step:step_size=5,gamma=0.5", "--warmup", "2",
                       "--patience", "2", "--monitor", "val_accuracy", "--optimizer", "sgd", "--lr", "0.3",
                       "--out", tmp_path / "w.npz")
    assert code == 0
    tr = sb.compile(cli.load_model(MODEL), optimizer=sb.optim.SGD(lr=0.3), seed=0)
    with np.load(data) as f:
        d = dict(f)
    hist = tr.fit(d, epochs=30, batch_size=16, validation=d, progress=False,
                  lr_schedule=sb.schedules.Warmup(2, sb.schedules.Step(5, gamma=0.5)),
                  early_stopping=sb.EarlyStopping("val_accuracy", patience=2))
    assert len(hist["epoch"]) < 30 and f"trained 'mlp': {len(hist['epoch'])} epochs, {tr.t} steps" in out
    with np.load(tmp_path / "w.npz") as f:
        for k, v in tr.params.items():
            np.testing.assert_array_equal(f[k], v)
    code, _, err = run(capsys, "train", MODEL, "--data", data, "--lr-schedule", "cosine:T=3")
    assert code == 1 and "--lr-schedule: cosine takes T_max=..., eta_min=..., per=...; got 'T=3'" in err
    code, _, err = run(capsys, "train", MODEL, "--data", data, "--lr-schedule", "step")
    assert code == 1 and "--lr-schedule: step needs step_size=..." in err
    code, _, err = run(capsys, "train", MODEL, "--data", data, "--lr-schedule", "onecycle")
    assert code == 1 and "unknown schedule 'onecycle'; choose from step, exponential, cosine, linear" in err
    code, _, err = run(capsys, "train", MODEL, "--data", data, "--patience", "2", "--monitor", "val_loss")
    assert code == 1 and "monitors 'val_loss', which this run does not report (it needs validation data)" in err


def test_train_plot(capsys, tmp_path, data):
    pytest.importorskip("matplotlib")
    code, out, _ = run(capsys, "train", MODEL, "--data", data, "--quiet", "--plot", tmp_path / "loss.png",
                       "--out", tmp_path / "w.npz")
    assert code == 0 and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_train_plot_without_matplotlib_stops_before_training(capsys, monkeypatch, data):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "train", MODEL, "--data", data, "--plot", "loss.png")
    assert code == 1 and out == "" and "needs matplotlib: pip install matplotlib" in err


def test_train_reports_data_errors(capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 63)), y=np.zeros(4, dtype=np.int64))
    code, _, err = run(capsys, "train", MODEL, "--data", tmp_path / "bad.npz", "--quiet")
    assert code == 1 and "input 'x' must have shape (batch, 64), got (4, 63)" in err
    code, _, err = run(capsys, "train", MODEL, "--data", tmp_path / "none.npz")
    assert code == 1 and "none.npz: no such file" in err
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 64)), y=np.zeros(4, dtype=np.int64))
    code, _, err = run(capsys, "train", MODEL, "--data", tmp_path / "ok.npz", "--checkpoint", tmp_path / "ck.npz",
                       "--resume")
    assert code == 1 and "there is no checkpoint" in err


def test_gradcheck(capsys, data):
    code, out, _ = run(capsys, "gradcheck", MODEL)  # random data from the declared shapes
    assert code == 0 and re.search(r"W1 +\S+ ok", out) and out.rstrip().endswith("ok")
    code, out, _ = run(capsys, "gradcheck", DIGITS, "--data", data)
    assert code == 0 and "fc1_W" in out


def write(tmp_path, text) -> str:
    p = tmp_path / "model.py"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_errors_name_the_file_and_line(capsys, tmp_path):
    path = write(tmp_path, """\
        import symbp as sb

        def build():
            m = sb.Model("bad")
            x = m.input("x", (4,))
            W = m.param("W", (5, 3))
            m.minimize(sb.mean(x @ W))
            return m
        """)
    code, out, err = run(capsys, "graph", path)
    assert code == 1 and out == ""
    assert err.startswith(f"symbp graph: {path}:7: in `m.minimize(sb.mean(x @ W))`: SymbpError: matmul")
    assert "Traceback" not in err


def test_syntax_error_and_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "build", write(tmp_path, "import symbp\nmodel = symbp.Model('m'\n"), "-o", tmp_path)
    assert code == 1 and f"{tmp_path / 'model.py'}:2: SyntaxError" in err
    code, _, err = run(capsys, "gradcheck", write(tmp_path, "x = 1\n"))
    assert code == 1 and "defines neither `model` (a symbp.Model) nor `build()`" in err
    code, _, err = run(capsys, "graph", write(tmp_path, "import symbp\nmodel = symbp.Model('m')\n"))
    assert code == 1 and "nothing to derive; call m.minimize(loss) to train it" in err
    code, _, err = run(capsys, "graph", tmp_path / "nope.py")
    assert code == 1 and "nope.py: no such file" in err


def test_cache_info_and_clear(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBP_CACHE_DIR", str(tmp_path))
    (tmp_path / "symbp_half_written_0123").mkdir()  # an entry without its manifest: damaged
    (tmp_path / "symbp_half_written_0123" / "module.so").write_bytes(b"\0" * 1000)
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "symbp_half_written_0123" in out and "damaged" in out and "1 module(s)" in out
    assert cli.main(["cache", "clear"]) == 0
    assert "removed 1 cached module(s)" in capsys.readouterr().out
    assert cli.main(["cache", "info"]) == 0 and "0 module(s)" in capsys.readouterr().out
