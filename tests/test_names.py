"""Names users choose reach keyword arguments, generated code, file names and package names:
each kind of name that once broke something, seen working or refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import symbp as sb
from symbp.ir import check_identifier


def stateful(extra: list[str], name: str = "names") -> sb.Model:
    """A stateful recurrence over input "s", plus one float input per name in ``extra`` (4-vectors)."""
    m = sb.Model(name)
    s = m.input("s", (3, 2))
    Wx, Wh = m.param("Wx", (2, 4)), m.param("Wh", (4, 4))
    hT, hs = sb.scan(lambda h, x: (sb.tanh(x @ Wx + h @ Wh),) * 2, s, sb.zeros((4,)), stateful=True)
    loss = sb.mean(hs * hs)
    for k, n in enumerate(extra):
        loss = loss + (k + 1) * sb.mean(m.input(n, (4,)) * hT)
    m.minimize(loss)
    return m


def module_globals() -> list[str]:
    """Every public top-level name of a generated module, on each backend, after a step."""
    batch = {"s": np.ones((2, 3, 2))}
    names = set()
    for backend in ("numpy", "cython"):
        tr = sb.compile(sb.derive(stateful([], "globals")), backend=backend, dtype="float64")
        tr.step(**batch)
        names |= {k for k in vars(tr.kernels) if not k.startswith("_")}
    return sorted(names)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_inputs_named_like_generated_globals_or_self_work(backend):
    """An input called ``self`` (a keyword of every Trainer method) or like any global of the
    generated module (``STATE`` once hid the carries of a stateful loop) trains exactly as the
    same model with plain names."""
    names = list(dict.fromkeys(["self", "STATE", *module_globals()]))  # STATE: a global before the workspace
    assert "step" in names and "FUNCTIONS" in names
    plain = [f"v{k}" for k in range(len(names))]
    rng = np.random.default_rng(0)
    values = {"s": rng.normal(size=(2, 3, 2)), **{n: rng.normal(size=(2, 4)) for n in plain}}
    results = []
    for chosen in (plain, names):
        tr = sb.compile(sb.derive(stateful(chosen)), backend=backend, dtype="float64")
        batch = {"s": values["s"], **{c: values[p] for c, p in zip(chosen, plain)}}
        losses = [tr.step(**batch), tr.step(**batch), tr.loss(**batch)]
        grads = tr.gradients(**batch)
        results.append((losses, grads))
    assert results[1][0] == results[0][0]
    for k in results[0][1]:
        np.testing.assert_array_equal(results[1][1][k], results[0][1][k])


@pytest.mark.parametrize("bad", ["pkg\n", "x\n", "W\n"])
def test_a_trailing_newline_is_not_an_identifier(bad, tmp_path):
    with pytest.raises(sb.SymbpError, match="not a valid Python identifier"):
        check_identifier(bad, "input")
    m = stateful([], "pkg")
    with pytest.raises(sb.SymbpError, match="package name .* not a valid Python identifier"):
        sb.build(sb.derive(m), tmp_path / "out", name=bad)
    assert not (tmp_path / "out" / "pyproject.toml").exists()


@pytest.mark.parametrize("name, message", [
    ("os", "the standard library's module 'os'"),
    ("json", "the standard library's module 'json'"),
    ("numpy", "a required module 'numpy'"),
    ("symbp", "a required module 'symbp'"),
    ("pytest", "would hide the installed module 'pytest'"),
])
def test_package_names_that_hide_other_modules_are_refused(name, message, tmp_path):
    d = sb.derive(stateful([], "pkg"))
    with pytest.raises(sb.SymbpError, match=message):
        sb.build(d, tmp_path / "out", name=name)
    with pytest.raises(sb.SymbpError, match=r"pass sb.build\(..., name=...\)"):
        sb.build(sb.derive(stateful([], name)), tmp_path / "out")  # the model's name as the default


def test_a_package_symbp_built_may_be_built_again(tmp_path, monkeypatch):
    """Rebuilding after a change, with the package importable from the current folder, works."""
    d = sb.derive(stateful([], "again"))
    sb.build(d, tmp_path)
    (init,) = tmp_path.rglob("again/__init__.py")  # wherever the package's layout puts it
    monkeypatch.syspath_prepend(str(init.parent.parent))
    assert __import__("importlib").util.find_spec("again").origin == str(init)
    assert sb.build(d, tmp_path) == tmp_path


def test_long_model_names_compile_and_long_package_names_are_refused(tmp_path):
    from codegen.standalone.writer import MAX_NAME

    d = sb.derive(stateful([], "a" * 300))
    batch = {"s": np.ones((2, 3, 2))}
    assert np.isfinite(sb.compile(d, backend="cython").step(**batch))  # the cache entry's name is cut
    with pytest.raises(sb.SymbpError, match=f"300 characters long; file names allow at most {MAX_NAME}"):
        sb.build(d, tmp_path / "out")
    assert len(list(sb.build(d, tmp_path / "out", name="short").rglob("short/trainer.py"))) == 1
