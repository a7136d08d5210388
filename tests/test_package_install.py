"""Standalone packages install and run the way their README says, in a fresh virtual environment.

What a user runs, verbatim: the generated README's bash commands (``pip install .`` with build
isolation, so pip fetches the build requirements the package declares, then the self-test and a
training run), in the package's own folder, in a venv without symbp and without the system's
site-packages. One venv serves both backends' packages. Then the self-test from another folder,
and the README's Python block (a short train). Also the main README's section "From a model
file to a trained module", command by command.

Needs a package index pip can reach (its configured one) and, for the Cython package, a C
compiler; without them the tests skip and say why.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import symbp as sb

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = "Scripts" if os.name == "nt" else "bin"


def model() -> sb.Derivation:
    m = sb.Model("tiny")
    x = m.input("x", (6,))
    y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (6, 8)) + m.param("b1", (8,), init="zeros"))
    logits = h @ m.param("W2", (8, 3)) + m.param("b2", (3,), init="zeros")
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return sb.derive(m)


def data(n: int = 48) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}  # learnable labels


def shell_env(venv: pathlib.Path | None, extra_path: tuple = ()) -> dict:
    """The environment of a shell with ``venv`` activated, and nothing else that finds symbp:
    no PYTHON* variables, no other venv on PATH. pip keeps its configuration (index, cache)."""
    others = {str(pathlib.Path(sys.prefix) / BIN), os.environ.get("VIRTUAL_ENV", "")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in others]
    head = [str(venv / BIN)] if venv else []
    env["PATH"] = os.pathsep.join([*head, *map(str, extra_path), *path])
    if venv:
        env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def sh(command: str, cwd, env, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one README line in bash, as a user would type it; fail with its output."""
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"`{command}` in {cwd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-6000:]}")
    return done


def blocks(readme: pathlib.Path, lang: str, after: str = "") -> list[str]:
    """The ``lang`` code blocks of ``readme`` (from the heading ``after`` on, up to the next heading of its level)."""
    text = readme.read_text()
    if after:
        start = text.index(after)
        level = re.match(r"#+", after).group(0)
        end = text.find("\n" + level + " ", start + len(after))
        text = text[start:end if end > 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(readme: pathlib.Path, after: str = "") -> list[str]:
    return [line for block in blocks(readme, "bash", after) for line in block.splitlines() if line.strip()]


def c_compiler() -> str | None:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return shutil.which(cc[0]) if cc else None


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> pathlib.Path:
    """A fresh venv: no system site-packages, no symbp; skips if pip cannot reach an index."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=shell_env(None))
    probe = subprocess.run([str(root / BIN / "python"), "-m", "pip", "download", "-q", "--no-deps", "-d",
                            str(root / "probe"), "setuptools>=61"], env=shell_env(root), capture_output=True,
                           text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip("pip cannot fetch build requirements from its configured index (offline?): "
                    + probe.stderr.strip()[-300:])
    return root


def test_the_fresh_venv_has_no_symbp(venv, tmp_path):
    done = subprocess.run(["python", "-c", "import symbp"], cwd=tmp_path, env=shell_env(venv), capture_output=True,
                          text=True)
    assert done.returncode != 0 and "No module named 'symbp'" in done.stderr


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_readme_commands_install_selftest_and_train(venv, backend, tmp_path):
    if backend == "cython" and c_compiler() is None:
        pytest.skip("no C compiler to build the Cython package's extensions")
    name = f"tiny_{backend}"
    pkg = sb.build(model(), tmp_path / f"{name}_pkg", backend=backend, optimizer=sb.optim.Adam(lr=0.05), seed=1,
                   name=name)
    np.savez(pkg / "data.npz", **data())  # the README's "data.npz holding one array per input name"
    env = shell_env(venv)
    readme = pkg / "README.md"
    lines = commands(readme)
    assert lines[0].startswith("pip install .") and f"python -m {name} --selftest" in lines[1], lines
    out = {line: sh(line, pkg, env).stdout for line in lines}  # in the package's folder, in order
    assert "selftest passed" in out[lines[1]]
    assert "trained 10 epochs (20 steps)" in out[lines[2]] and (pkg / "trained.npz").exists()

    # the installed package, not the folder's sources, is what `python -m` found there
    where = sh(f"python -c 'import {name}; print({name}.__file__)'", pkg, env).stdout.strip()
    assert pathlib.Path(where).is_relative_to(venv), where
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "selftest passed" in sh(f"python -m {name} --selftest", elsewhere, env).stdout
    assert "selftest passed" in sh(f"{name} --selftest", elsewhere, env).stdout  # the console script

    # the README's Python block: a short train from Python, then the trained weights learned something
    (python,) = blocks(readme, "python")
    (pkg / "readme_block.py").write_text(python)
    sh("python readme_block.py", pkg, env)
    check = (f"import numpy as np, {name}\nd = dict(np.load('data.npz'))\n"
             f"before, after = {name}.trainer().loss(**d), {name}.trainer('trained.npz')\n"
             "print(after.t, before, after.loss(**d))")
    steps, before, after = sh(f"python -c {shlex.quote(check)}", pkg, env).stdout.split()
    assert int(steps) == 1 + 10 * 2 and float(after) < 0.7 * float(before)  # step + fit(epochs=10, batch 32)


MAIN_SECTION = "## From a model file to a trained module"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is needed by `symbp graph --format svg`")
def test_main_readme_model_file_section_runs_verbatim(venv, tmp_path):
    """The main README's commands, run as written from a folder holding its examples/.

    The user's environment has symbp (with its examples' extras) and pip installs the package
    into it. Here: a second fresh venv that sees this test run's site-packages through a .pth
    file, so the `mlp` package goes into that venv and never into the one running the tests."""
    user = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", str(user)], check=True, env=shell_env(None))
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(user / BIN / "python"), "-c", where], capture_output=True, text=True,
                          check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    pathlib.Path(site, "symbp_test_overlay.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    # the `symbp` command of this test run, behind the user venv's python and pip
    env = shell_env(user, extra_path=(pathlib.Path(sys.prefix) / BIN,))
    lines = commands(ROOT / "README.md", MAIN_SECTION)
    assert any(line.startswith("pip install ./mlp_pkg") for line in lines), lines
    out = {line: sh(line, tmp_path, env) for line in lines}
    assert "selftest passed" in "".join(o.stdout for o in out.values())
    for made in ("mlp.svg", "mlp_pkg/pyproject.toml", "digits.npz", "trained.npz", "loss.png"):
        assert (tmp_path / made).exists(), made
    where = sh("python -c 'import mlp; print(mlp.__file__)'", tmp_path, env).stdout.strip()
    assert pathlib.Path(where).is_relative_to(user), where
