"""The Cython backend against the NumPy backend: every registered op, structural corner cases
(transposes folded into BLAS, strided views, copies), the MLP and every optimiser."""

from __future__ import annotations

import os

import numpy as np
import pytest

import symbp as sb
from symbp.ops import elementwise as E
from tests.helpers import op_model, op_names

pytest.importorskip("Cython")
RTOL = {"float64": 1e-10, "float32": 1e-5}


def close(actual, desired, dtype, what=""):
    """Relative agreement, measured against the array's scale (float32 sums of hundreds of
    terms carry absolute rounding error ~1e-6 x their magnitude, whatever one element is)."""
    desired = np.asarray(desired, dtype=np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=RTOL[dtype], atol=RTOL[dtype] * max(scale, 1e-3), err_msg=what)


def all_ops_model(rng):
    """Every registered op in one model (one compile instead of one per op): each op's test
    model from tests.helpers, its inputs and parameters renamed '<op>_<name>', losses summed."""
    m = sb.Model("all_ops")
    batch, params, loss = {}, {}, None
    for name in op_names():
        mi, bi, pi = op_model(name, rng)
        for table, target, values, store in ((mi.inputs, m.inputs, bi, batch), (mi.params, m.params, pi, params)):
            for k, node in table.items():
                node.name = f"{name}_{k}"
                target[node.name] = node
                if k in values:
                    store[node.name] = values[k]
        loss = mi.loss if loss is None else E.add(loss, mi.loss)
    m.minimize(loss)
    return m, batch, params


def compare(d, batch, params, dtype, optimizer=None, steps=0):
    kw = dict(dtype=dtype, params=params, optimizer=optimizer)
    tn = sb.compile(d, backend="numpy", **kw)
    tc = sb.compile(d, backend="cython", **kw)
    close(tc.loss(**batch), tn.loss(**batch), dtype, "loss")
    gn, gc = tn.gradients(**batch), tc.gradients(**batch)
    for k in gn:
        close(gc[k], gn[k], dtype, f"gradient of {k}")
    for _ in range(steps):
        close(tc.step(**batch), tn.step(**batch), dtype, "step loss")
    for k in tn.params:
        close(tc.params[k], tn.params[k], dtype, f"parameter {k} after {steps} steps")
    return tn, tc


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_registered_op_matches_numpy(dtype):
    m, batch, params = all_ops_model(np.random.default_rng(0))
    assert {k.split("_")[0] for k in m.params} | {k.split("_")[0] for k in m.inputs} >= set(
        n.split("_")[0] for n in op_names())
    compare(sb.derive(m), batch, params, dtype, sb.optim.SGD(lr=0.1), steps=2)


def structural_model():
    """Layouts the registry samples miss: ta/tb products, a transposed view into BLAS, a
    sliced (strided) operand that must be copied, 3-d inputs, keepdims reductions, max ties."""
    m = sb.Model("zoo")
    x = m.input("x", (4, 6))
    W = m.param("W", (6, 5))
    V = m.param("V", (3, 6))
    h = sb.tanh(x @ W)                                   # (B, 4, 5): leading axes merged
    a = sb.sum(h, axis=1)                                # (B, 5)
    b = a @ sb.transpose(W)                              # tb folded: (B, 6)
    c = x[:, 1:4, ::2]                                   # strided view (B, 3, 3)
    c2 = sb.reshape(c, (9,))                             # reshape of a strided view: a copy
    e = x[:, 0, :] @ V.T                                 # (B, 3) via tb
    g = sb.concat([b, e, c2], axis=-1)                   # (B, 18)
    k = sb.max(sb.concat([g, g], axis=-1), axis=-1, keepdims=True)   # ties: gradient shared
    s = sb.sum(g * g, axis=-1, keepdims=True) / k
    loss = sb.mean(s) + sb.sum(sb.softplus(V)) + sb.sum(sb.sigmoid(W[:3, :].T @ V))  # transposed slice
    m.output("g", g)
    m.minimize(loss)
    rng = np.random.default_rng(1)
    return m, {"x": rng.normal(size=(5, 4, 6))}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_structural_layouts_match_numpy(dtype):
    m, batch = structural_model()
    tn, tc = compare(sb.derive(m), batch, None, dtype, sb.optim.SGD(lr=0.05), steps=1)
    close(tc.predict(**batch)["g"], tn.predict(**batch)["g"], dtype)


CONV_CASES = [
    # (H, W), C_in, kernel, C_out, strides, padding, pooling after ReLU: (kind, window, strides)
    ((8, 8), 1, 3, 16, 1, "valid", ("max", 2, 2)),             # the benchmark CNN; windows tile
    ((7, 9), 2, 3, 16, 2, "same", ("max", 3, 1)),              # stride 2, padded; windows overlap
    ((6, 7), 3, (2, 3), 32, 1, "same", ("avg", (2, 1), (2, 1))),  # two vectors of C_out (float32)
    ((5, 5), 2, 3, 8, 1, "valid", ("max", 3, 3)),              # C_out 8: half a float32 vector
    ((6, 6), 8, 3, 16, (1, 2), "valid", ("max", 2, 1)),        # 72 patch rows: 6 blocks of dW rows
    ((5, 5), 20, 3, 16, 1, "same", ("avg", 5, 5)),             # 180 patch rows
    ((5, 6), 2, 3, 48, 1, "same", ("max", (1, 2), (1, 2))),    # C_out 48: three float32 vectors
]
"""Convolutions that hit and miss the direct-loop forms of codegen.cython.conv_direct (C_out a
multiple of one 64-byte vector, at most two vectors, at most 160 patch rows; float64 vectors
hold 8), with output widths that fill and leave partial pixel blocks, and max pooling whose
windows tile the input (no zero fill) or overlap."""


def conv_model(rng):
    """Every CONV_CASES branch in one model (one compile), plus a conv stacked on the first
    branch so that a convolution's input gradient feeds a direct weight gradient."""
    m = sb.Model("convs")
    batch, loss = {}, None
    for k, (hw, c, kernel, o, strides, padding, (kind, window, pstrides)) in enumerate(CONV_CASES):
        x = m.input(f"x{k}", (*hw, c))
        ks = (kernel, kernel) if isinstance(kernel, int) else kernel
        h = sb.relu(sb.conv2d(x, m.param(f"W{k}", (*ks, c, o)), strides=strides, padding=padding)
                    + m.param(f"b{k}", (o,), init="normal", std=0.1))
        if k == 0:
            h = sb.conv2d(h, m.param("V", (2, 2, o, 16)), padding="same")
        pool = sb.max_pool2d if kind == "max" else sb.avg_pool2d
        p = pool(h, window, pstrides)
        term = sb.mean(p * p) + sb.mean(h)
        loss = term if loss is None else loss + term
        batch[f"x{k}"] = rng.normal(size=(3, *hw, c))
    m.minimize(loss)
    return m, batch


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_and_pool_configurations_match_numpy(dtype):
    m, batch = conv_model(np.random.default_rng(2))
    compare(sb.derive(m), batch, None, dtype, sb.optim.SGD(lr=0.05), steps=2)


def mlp(sizes=(64, 256, 10)):
    m = sb.Model("mlp")
    x = m.input("x", (sizes[0],))
    y = m.input("y", (), dtype="int64")
    h = x
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        h = h @ m.param(f"W{i + 1}", (a, b)) + m.param(f"b{i + 1}", (b,), init="normal", std=0.1)
        if i < len(sizes) - 2:
            h = sb.tanh(h)
    m.output("logits", h)
    m.minimize(sb.softmax_cross_entropy(h, y))
    return m


def mlp_batch(n=32, d=64, k=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, d)), "y": rng.integers(0, k, n)}


OPTIMIZERS = {
    "sgd": lambda: sb.optim.SGD(lr=0.1, weight_decay=1e-3),
    "momentum": lambda: sb.optim.Momentum(lr=0.05, nesterov=True, clip_value=0.05),
    "rmsprop": lambda: sb.optim.RMSprop(lr=0.01),
    "adam": lambda: sb.optim.Adam(lr=0.01, clip_norm=0.05, clip_value=0.02, weight_decay=1e-2),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_optimizer_steps_match_numpy(opt):
    m = mlp((8, 16, 3))
    compare(sb.derive(m), mlp_batch(12, 8, 3), None, "float64", OPTIMIZERS[opt](), steps=4)


def test_mlp_float32_default_flags(monkeypatch):
    """The README's MLP at the default -O3 -march=native, float32: gradients, steps, predict;
    and a batch of another size (buffers are per batch size). Batch 128 makes the first
    layer's products big enough for the OpenMP path; 7 rows exercise the kernel's edges."""
    monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    m = mlp()
    tn, tc = compare(sb.derive(m), mlp_batch(128), None, "float32", sb.optim.Adam(lr=1e-3), steps=3)
    other = mlp_batch(7, seed=3)
    close(tc.predict(**other)["logits"], tn.predict(**other)["logits"], "float32")
    close(tc.loss(**other), tn.loss(**other), "float32")


@pytest.mark.parametrize("dtype,flags", [("float32", None), ("float64", "-O1")])
def test_transposed_weight_products_match_numpy(monkeypatch, dtype, flags):
    """d_h1 = d_z2 W2^T packs W2^T with in-register block transposes (sb_pack_t): a width
    of 64 takes symbp's own kernel; 44 = 2*16 + 12 = 5*8 + 4 leaves a scalar tail in float32
    and float64 alike; 7 rows exercise the kernel's edges."""
    if flags is None:
        monkeypatch.delenv("SYMBP_CFLAGS", raising=False)
    else:
        monkeypatch.setenv("SYMBP_CFLAGS", flags)
    m = mlp((8, 64, 44, 3))
    tn, tc = compare(sb.derive(m), mlp_batch(40, 8, 3), None, dtype, sb.optim.SGD(lr=0.1), steps=2)
    other = mlp_batch(7, 8, 3, seed=5)
    gn, gc = tn.gradients(**other), tc.gradients(**other)
    for k in gn:
        close(gc[k], gn[k], dtype, f"gradient of {k}, batch 7")


def test_non_finite_loss_leaves_params_untouched():
    from codegen.runtime.trainer import NonFiniteLoss

    m = mlp((8, 16, 3))
    tc = sb.compile(sb.derive(m), backend="cython", dtype="float64", optimizer=sb.optim.SGD(lr=0.1))
    batch = mlp_batch(12, 8, 3)
    batch["x"][0, 0] = np.nan
    before = {k: v.copy() for k, v in tc.params.items()}
    with pytest.raises(NonFiniteLoss):
        tc.step(**batch)
    for k in before:
        np.testing.assert_array_equal(tc.params[k], before[k])


def test_generated_module_rejects_wrong_arrays():
    m = mlp((8, 16, 3))
    tc = sb.compile(sb.derive(m), backend="cython", dtype="float64")
    P = dict(tc.params)
    P["W1"] = np.zeros((8, 16), np.float32)  # wrong dtype never reaches C
    with pytest.raises(ValueError, match="expected"):
        tc.kernels.loss(P, {"x": np.zeros((2, 8)), "y": np.zeros(2, np.int64)}, tc.workspace)


def test_printer_knows_every_scalar_function():
    from codegen.cython.printer import KNOWN, KernelPrinter
    from symbp.ops import scalar as S

    assert KNOWN == {f.__name__ for f in S.FUNCTIONS}
    printer = KernelPrinter("float32")
    x0, x1, x2 = S.symbols(3)
    for f in S.FUNCTIONS:
        args = (x0, x1, x2)[:f.nargs.args[0] if hasattr(f.nargs, "args") else 1]
        text = printer.doprint(f(*args))
        assert "double" not in text and "pow(" not in text, text
    assert printer.doprint(x0 ** 2 / 2) == "(0.5f)*((x0)*(x0))" or "pow" not in printer.doprint(x0 ** 2 / 2)


def test_emission_is_deterministic_and_the_kernels_are_plain_c():
    import codegen

    m = mlp((8, 16, 3))
    spec = codegen.Spec(sb.derive(m), sb.optim.Adam(), "float32")
    first, second = codegen.emit(spec, "cython"), codegen.emit(codegen.Spec(sb.derive(mlp((8, 16, 3))),
                                                                            sb.optim.Adam(), "float32"), "cython")
    assert first == second
    from codegen.cython.module import kernels_of

    kernels = kernels_of(first)
    assert "sb_gemm(" in kernels and "tanhf(" in kernels and "double x" not in kernels


NOT_YET = {"scan_cot"}
"""Never emitted: derive sums these cotangent packets into the scan_bwd node (symbp.ops.scan)."""


def test_every_registered_op_has_a_cython_emitter():
    """A new op must be taught to this backend (codegen.cython.kernels) or fail clearly."""
    from codegen.cython.emitter import EMIT, VIEWS
    from symbp.registry import OPS

    missing = [k for k, v in OPS.items() if v.kind == "structural" and k not in EMIT and k not in VIEWS
               and k not in NOT_YET]
    assert not missing, f"no cython emitter for {missing}"


def test_pyx_builds_as_one_file_too():
    """The generated .pyx is self-contained: built as a single C file (as a standalone
    package's setup would), without the kernel/glue split, it computes the same loss."""
    from codegen.cython import build
    from codegen.cython.module import BEGIN

    m = mlp((8, 16, 3))
    tc = sb.compile(sb.derive(m), backend="cython", dtype="float64")
    whole = build.build(tc.source.replace(BEGIN, "/* (one file) */"), "onefile", ("-O1",))
    batch = tc._batch(mlp_batch(12, 8, 3), tc.kernels.NEEDS["loss"], "loss")
    np.testing.assert_allclose(whole.loss(dict(tc.params), batch, tc.workspace),
                               tc.kernels.loss(dict(tc.params), batch, tc.workspace), rtol=1e-12)


def test_standalone_cython_package_builds_and_passes_its_selftest(tmp_path):
    """sb.build(backend="cython"): the package's setup.py cythonizes the .pyx files (here in
    place, with this interpreter's Cython and setuptools) and the package's own self-test, run
    from its src/ folder, checks the compiled gradients against finite differences. (What users
    run, pip install in a fresh venv, is tests/test_package_install.py.)"""
    import subprocess
    import sys

    out = tmp_path / "cy_pkg"
    sb.build(sb.derive(mlp((5, 7, 3))), out, backend="cython", optimizer=sb.optim.Adam(lr=0.01), seed=3)
    assert (out / "setup.py").exists() and (out / "src" / "mlp" / "_kernels.pyx").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=out, env=env, check=True,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-m", "mlp", "--selftest"], cwd=out / "src", env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "selftest passed" in done.stdout, done.stdout + done.stderr
