"""An input may name the float dtype: ``m.input(..., dtype="float32"/"float64")``. sb.compile,
sb.build and the CLI then build at it unless given a dtype (an explicit one wins, so gradcheck's
float64 works); float32 beside float64 in one model is an error naming both inputs."""

import importlib.util
import textwrap

import numpy as np
import pytest

import symbp as sb
from symbp import cli
from symbp.autodiff.bptt import unroll

BACKENDS = ["numpy", pytest.param("cython", marks=pytest.mark.skipif(importlib.util.find_spec("Cython") is None,
                                                                     reason="needs Cython"))]


def model(dtype: str = "float"):
    m = sb.Model("typed")
    x = m.input("x", (3,), dtype=dtype)
    y = m.input("y", (), dtype="int64")
    W = m.param("W", (3, 4), init="normal", std=1.0)
    m.output("z", x @ W)
    m.minimize(sb.softmax_cross_entropy(sb.tanh(x @ W), y))
    return m


BATCH = {"x": np.array([[0.1, -0.7, 1.3], [2.0, 0.3, -0.4]]), "y": np.array([1, 3])}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("declared, compiled", [("float", "float32"), ("float32", "float32"),
                                                ("float64", "float64")])
def test_compile_builds_at_the_declared_dtype(declared, compiled, backend):
    m = model(declared)
    d = sb.derive(m)
    assert d.dtype == (None if declared == "float" else declared) and m.dtype == d.dtype
    tr = sb.compile(d, backend=backend)
    assert tr.params["W"].dtype == np.dtype(compiled)
    z = tr.predict(**BATCH)["z"]
    assert z.dtype == np.dtype(compiled)
    # Computed in that dtype, not just cast to it: float64 agrees with NumPy to 1e-15.
    exact = BATCH["x"] @ tr.params["W"].astype(np.float64)
    assert np.max(np.abs(z - exact)) < (1e-13 if compiled == "float64" else 1e-5)


@pytest.mark.parametrize("declared, explicit", [("float32", "float64"), ("float64", "float32")])
def test_an_explicit_dtype_wins(declared, explicit):
    tr = sb.compile(sb.derive(model(declared)), dtype=explicit)
    assert tr.params["W"].dtype == np.dtype(explicit)


def test_gradcheck_runs_in_float64_on_a_float32_model():
    assert sb.gradcheck(model("float32"), BATCH, tolerance=1e-7).ok


def test_float32_beside_float64_is_an_error_naming_both():
    m = sb.Model("mixed")
    m.input("a", (2,), dtype="float32")
    m.input("b", (2,))            # "float" follows whatever is compiled: no clash
    m.input("c", (2,), dtype="float32")
    with pytest.raises(sb.SymbpError, match="model 'mixed': input 'd' is declared float64 but input 'a' is float32"):
        m.input("d", (2,), dtype="float64")
    assert "d" not in m.inputs and m.dtype == "float32"


def test_unknown_dtypes_list_the_choices():
    with pytest.raises(sb.SymbpError, match="input 'x': unknown dtype 'float16'; use one of float, float32, "
                                            "float64, int64"):
        sb.Model("m").input("x", (2,), dtype="float16")
    with pytest.raises(sb.SymbpError, match="unknown dtype 'double'"):
        sb.compile(sb.derive(model()), dtype="double")


def test_the_unrolled_oracle_keeps_the_declared_dtype():
    assert sb.derive(unroll(model("float64"))).dtype == "float64"


def test_build_and_the_cli_use_the_declared_dtype(tmp_path, capsys):
    def kernels_dtype(pkg):
        return next(line for line in (pkg / "src" / "typed" / "_kernels.py").read_text().splitlines()
                    if line.startswith("DTYPE ="))

    sb.build(sb.derive(model("float64")), tmp_path / "a")
    assert kernels_dtype(tmp_path / "a") == "DTYPE = np.float64"
    sb.build(sb.derive(model("float64")), tmp_path / "b", dtype="float32")
    assert kernels_dtype(tmp_path / "b") == "DTYPE = np.float32"
    src = tmp_path / "typed_model.py"
    src.write_text(textwrap.dedent('''
        import symbp as sb
        model = sb.Model("typed")
        x = model.input("x", (3,), dtype="float64")
        model.minimize(sb.mean(sb.tanh(x @ model.param("W", (3, 2)))))
    '''))
    assert cli.main(["build", str(src), "-o", str(tmp_path / "c")]) == 0
    assert kernels_dtype(tmp_path / "c") == "DTYPE = np.float64"
    assert cli.main(["build", str(src), "-o", str(tmp_path / "d"), "--dtype", "float32"]) == 0
    assert kernels_dtype(tmp_path / "d") == "DTYPE = np.float32"
    capsys.readouterr()
