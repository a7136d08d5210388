"""Standalone packages from sb.build: installed into a fresh virtual environment without symbp,
they train to the same numbers as the in-process trainer, pass their self-test, and train
from the command line.

One venv per test session (creating it and installing NumPy costs ~10 s); every test that
needs it shares the ``venv`` fixture.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import symbp as sb

ROOT = pathlib.Path(__file__).resolve().parent.parent


def mlp() -> sb.Derivation:
    m = sb.Model("tiny_mlp")
    x = m.input("x", (5,))
    y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (5, 7)) + m.param("b1", (7,), init="zeros"))
    logits = h @ m.param("W2", (7, 3)) + m.param("b2", (3,), init="zeros")
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


def batch(n=12, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 5)), "y": rng.integers(0, 3, n)}


def clean_env() -> dict:
    """The environment without anything that would let a venv's Python find symbp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "tiny_mlp_pkg"
    sb.build(mlp(), out, optimizer=sb.optim.Adam(lr=0.01), dtype="float64", seed=3)
    return out


@pytest.fixture(scope="session")
def venv(tmp_path_factory, package):
    """A plain venv (no system site-packages) with NumPy and the built package installed."""
    root = tmp_path_factory.mktemp("venv")
    env = clean_env()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=env)
    py = root / "bin" / "python"
    t1 = time.perf_counter()
    subprocess.run([py, "-m", "pip", "install", "-q", "numpy", "wheel"], check=True, env=env)
    t2 = time.perf_counter()
    # --no-build-isolation: the venv's own setuptools (>= 61 with Python 3.11, plus wheel) builds
    # it, which saves ~8 s of fetching build tools into an isolated environment; a plain
    # `pip install DIR` works too (it reads the same pyproject.toml)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-build-isolation", str(package)], check=True, env=env,
                   cwd=root)
    t3 = time.perf_counter()
    print(f"\nvenv {t1 - t0:.1f} s, numpy {t2 - t1:.1f} s, package {t3 - t2:.1f} s")
    return py


def run(py, args, cwd, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(py), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def test_package_layout(package):
    names = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
    assert names == {"pyproject.toml", "README.md", "src/tiny_mlp/__init__.py", "src/tiny_mlp/__main__.py",
                     "src/tiny_mlp/trainer.py", "src/tiny_mlp/training.py", "src/tiny_mlp/workspace.py",
                     "src/tiny_mlp/plots.py", "src/tiny_mlp/schedules.py", "src/tiny_mlp/values.py",
                     "src/tiny_mlp/inference.py", "src/tiny_mlp/distributed.py", "src/tiny_mlp/weights.py",
                     "src/tiny_mlp/_kernels.py", "src/tiny_mlp/_build.py",
                     "src/tiny_mlp/_kernels64.py", "src/tiny_mlp/weights.npz"}
    for p in (package / "src" / "tiny_mlp").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(symbp|sympy|networkx|codegen)\b", p.read_text(), re.M), p
    toml = (package / "pyproject.toml").read_text()
    assert 'dependencies = ["numpy>=1.22"]' in toml and 'tiny_mlp = "tiny_mlp.__main__:main"' in toml
    assert "python -m tiny_mlp --selftest" in (package / "README.md").read_text()


def test_build_checks_its_arguments(tmp_path):
    with pytest.raises(sb.SymbpError, match="no standalone packaging for backend 'nope'"):
        sb.build(mlp(), tmp_path, backend="nope")
    with pytest.raises(sb.SymbpError, match="not a valid Python identifier"):
        sb.build(mlp(), tmp_path, name="my-model")


def test_trains_in_a_venv_without_symbp_like_in_process(venv, package, tmp_path):
    data = batch(24)
    np.savez(tmp_path / "data.npz", **data)
    script = textwrap.dedent("""
        import importlib.util, json, sys
        import numpy as np
        assert importlib.util.find_spec("symbp") is None, "symbp must not be installed here"
        import tiny_mlp
        d = dict(np.load("data.npz"))
        tr = tiny_mlp.trainer()
        first = {"x": d["x"][:8], "y": d["y"][:8]}
        out = {"loss": tr.loss(**first)}
        out.update({"g_" + k: v for k, v in tr.gradients(**first).items()})
        out["steps"] = np.array([tr.step(x=d["x"][i:i + 8], y=d["y"][i:i + 8]) for i in (0, 8, 16)])
        hist = tr.fit(d, epochs=2, batch_size=5, seed=1, progress=False)
        out["fit_loss"] = np.array(hist["loss"])
        out.update({"p_" + k: v for k, v in tr.params.items()})
        np.savez("result.npz", **out)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("symbp", "sympy", "networkx"))))
    """)
    done = run(venv, ["-c", script], tmp_path)
    assert json.loads(done.stdout) == []  # nothing of symbp's stack was imported
    got = dict(np.load(tmp_path / "result.npz"))
    tr = sb.compile(mlp(), optimizer=sb.optim.Adam(lr=0.01), dtype="float64", seed=3)
    first = {"x": data["x"][:8], "y": data["y"][:8]}
    np.testing.assert_allclose(got["loss"], tr.loss(**first), rtol=1e-13)
    for k, g in tr.gradients(**first).items():
        np.testing.assert_allclose(got["g_" + k], g, rtol=1e-12, atol=1e-15)
    steps = [tr.step(x=data["x"][i:i + 8], y=data["y"][i:i + 8]) for i in (0, 8, 16)]
    np.testing.assert_allclose(got["steps"], steps, rtol=1e-13)
    hist = tr.fit(data, epochs=2, batch_size=5, seed=1, progress=False)
    np.testing.assert_allclose(got["fit_loss"], hist["loss"], rtol=1e-12)
    for k, v in tr.params.items():
        np.testing.assert_allclose(got["p_" + k], v, rtol=1e-11, atol=1e-14)


def test_selftest_passes_in_the_venv(venv, tmp_path):
    done = run(venv, ["-m", "tiny_mlp", "--selftest"], tmp_path)
    assert "selftest passed" in done.stdout and "W1" in done.stdout
    console = pathlib.Path(venv).parent / "tiny_mlp"  # the console script runs the same main()
    assert "selftest passed" in run(console, ["--selftest"], tmp_path).stdout


def test_train_entry_point_in_the_venv(venv, tmp_path):
    np.savez(tmp_path / "data.npz", **batch(40, seed=4))
    done = run(venv, ["-m", "tiny_mlp", "train", "data.npz", "--epochs", "3", "--batch-size", "8", "--quiet",
                      "--validation", "data.npz", "--out", "w.npz", "--checkpoint", "ck.npz"], tmp_path)
    assert "trained 3 epochs (15 steps)" in done.stdout and "val_accuracy" in done.stdout
    tr = sb.compile(mlp(), optimizer=sb.optim.Adam(lr=0.01), dtype="float64", seed=3)
    meta = tr.load(tmp_path / "w.npz")  # the package's weights file loads into symbp's trainer
    assert meta["t"] == 15 and meta["model"] == "tiny_mlp"
    bad = run(venv, ["-m", "tiny_mlp", "train", "missing.npz"], tmp_path, check=False)
    assert bad.returncode != 0 and "missing.npz" in bad.stderr


def test_train_with_a_schedule_and_early_stopping_in_the_venv(venv, tmp_path):
    """The package's ``train`` takes the schedule and early-stopping flags, and its run equals the
    same fit in symbp (the schedules module travels with the package)."""
    data, val = batch(40, seed=4), batch(16, seed=5)
    np.savez(tmp_path / "data.npz", **data)
    np.savez(tmp_path / "val.npz", **val)
    done = run(venv, ["-m", "tiny_mlp", "train", "data.npz", "--epochs", "12", "--batch-size", "8", "--quiet",
                      "--validation", "val.npz", "--lr-schedule", "cosine:eta_min=0.001", "--warmup", "2",
                      "--patience", "2", "--out", "w.npz"], tmp_path)
    assert "trained" in done.stdout and "lr 0." in done.stdout
    script = ("import tiny_mlp; s = tiny_mlp.schedules; print(s.Warmup(2, s.Cosine(10)), s.EarlyStopping())")
    assert "Warmup(steps=2, then=Cosine(T_max=10" in run(venv, ["-c", script], tmp_path).stdout
    tr = sb.compile(mlp(), optimizer=sb.optim.Adam(lr=0.01), dtype="float64", seed=3)
    hist = tr.fit(data, epochs=12, batch_size=8, validation=val, progress=False,
                  lr_schedule=sb.schedules.Warmup(2, sb.schedules.Cosine(10, eta_min=0.001)),
                  early_stopping=sb.EarlyStopping("val_loss", patience=2))
    assert f"trained {hist['epoch'][-1]} epochs ({tr.t} steps)" in done.stdout
    with np.load(tmp_path / "w.npz") as f:
        for k, v in tr.params.items():
            np.testing.assert_allclose(f[k], v, rtol=1e-11, atol=1e-14)
    bad = run(venv, ["-m", "tiny_mlp", "train", "data.npz", "--lr-schedule", "cosine:T_max=__import__('os')"],
              tmp_path, check=False)
    assert bad.returncode == 1 and "--lr-schedule: cosine: T_max must be a number" in bad.stderr


def _break(g: np.ndarray, how: str) -> np.ndarray:
    """``g`` made wrong: scaled by 1.01, or one entry NaN or Inf."""
    if how == "scaled":
        return g * 1.01
    g = g.copy()
    g.flat[1] = np.nan if how == "nan" else np.inf
    return g


@pytest.mark.parametrize("how", ["scaled", "nan", "inf"])
@pytest.mark.parametrize("kernels", ["_kernels64", "_kernels"])
def test_selftest_catches_a_wrong_gradient(package, monkeypatch, capsys, how, kernels):
    """Run in-process from the built folder, with one kernel's gradient made wrong: the float64
    kernels' (checked against finite differences) or the compiled dtype's (checked against the
    float64 kernels). A NaN or Inf gradient is a failure, never "ok"."""
    monkeypatch.syspath_prepend(str(package / "src"))
    for k in [m for m in sys.modules if m.startswith("tiny_mlp")]:
        monkeypatch.delitem(sys.modules, k)
    import importlib

    from tiny_mlp.__main__ import selftest

    module = importlib.import_module(f"tiny_mlp.{kernels}")
    assert selftest()
    real = module.gradients

    def wrong(P, D, *workspace):
        loss, grads = real(P, D, *workspace)
        return loss, {**grads, "b1": _break(grads["b1"], how)}

    monkeypatch.setattr(module, "gradients", wrong)
    capsys.readouterr()
    assert not selftest()
    out = capsys.readouterr().out
    assert "selftest FAILED" in out, out
    failing = r"b1 +\S+ +FAIL" if kernels == "_kernels64" else r"kernels vs float64: .* FAIL"
    assert re.search(failing, out), out


def test_a_backend_supplies_its_own_files(tmp_path, monkeypatch):
    """The plug-in point for compiled backends: files, setup.py, build requirements, package data."""
    from codegen import standalone
    from codegen.numpy import package as numpy_package

    def fake(spec, name):
        files = numpy_package.files(spec, name)
        files.files["_kernels.pyx"] = "# cython source\n"
        return standalone.BackendFiles(files.files, build_requires=["Cython>=3", "numpy"],
                                       dependencies=["scipy"], setup_py="from setuptools import setup\nsetup()\n",
                                       package_data=["*.pyx"])

    monkeypatch.setitem(standalone.PACKAGERS, "fake", fake)
    out = sb.build(mlp(), tmp_path / "pkg", backend="fake")
    toml = (out / "pyproject.toml").read_text()
    assert 'requires = ["setuptools>=61", "Cython>=3", "numpy"]' in toml
    assert 'dependencies = ["numpy>=1.22", "scipy"]' in toml
    assert 'tiny_mlp = ["weights.npz", "*.pyx"]' in toml
    assert (out / "setup.py").read_text().startswith("from setuptools import setup")
    assert (out / "src" / "tiny_mlp" / "_kernels.pyx").exists()
