"""d.explain(batch) / symbp explain: FLOPs against hand counts, buffers against what the
generated code allocates, the memory a recurrence saves against T."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import symbp as sb
from symbp.registry import OPS
from symbp.show.cost import FLOPS, VIEW_OPS

ROOT = Path(__file__).resolve().parents[1]


def _workloads():
    spec = importlib.util.spec_from_file_location("workloads", ROOT / "benchmarks" / "workloads.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("workloads", mod)  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


W = _workloads()


def mm(b, k, n):
    """FLOPs of a (b, k) @ (k, n) product."""
    return 2 * b * k * n


def products(e):
    return {phase: e.data["flops_by_kind"][phase]["products"] for phase in ("forward", "backward")}


def test_mlp_flops_match_hand_count():
    B = W.BM
    e = sb.derive(W.mlp_model()).explain(batch=B)
    layers = [(64, 256), (256, 256), (256, 10)]
    fwd = sum(mm(B, k, n) for k, n in layers)
    # backward: every weight gradient, and the input gradient of every layer but the first (x is data)
    bwd = sum(mm(k, B, n) for k, n in layers) + sum(mm(B, n, k) for k, n in layers[1:])
    assert products(e) == {"forward": fwd, "backward": bwd}
    assert fwd + bwd == 60_686_336  # the 60.7 MFLOP
    # SGD with weight decay: p - lr*(g + wd*p), 4 operations per parameter element
    assert e.data["flops"]["update"] == 4 * e.data["params"]["count"]
    assert e.data["params"] == {"count": 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10,
                                "bytes": 4 * 85_002}
    f = e.data["flops"]
    assert f["total"] == f["forward"] + f["backward"] + f["update"]
    assert f["forward"] == sum(e.data["flops_by_kind"]["forward"].values())
    # the elementwise work of the forward pass: tanh(z + b) twice (2 ops), logits + b3 fused into
    # the loss, small beside the products
    assert 2 * B * 256 * 2 <= e.data["flops_by_kind"]["forward"]["elementwise"] < 0.01 * fwd
    assert e.data["costliest"][0]["op"] == "dot" and e.data["costliest"][0]["flops"] == mm(B, 256, 256)


def test_cnn_flops_match_hand_count():
    B = W.BC
    e = sb.derive(W.cnn_model()).explain(batch=B)
    conv = 2 * B * 6 * 6 * 16 * (3 * 3 * 1)  # valid 3x3 on 8x8: 6x6 outputs, 16 filters, 1 channel
    dense = mm(B, 144, 10)
    # backward: the kernel's gradient (not the image's: x is data), the dense weight and input gradients
    assert products(e) == {"forward": conv + dense, "backward": conv + 2 * dense}
    other = e.data["flops_by_kind"]["forward"]["other"]
    assert other >= B * 3 * 3 * 16 * 4  # the 2x2 max-pool's comparisons


@pytest.mark.parametrize("hoist", ["1", "0"])
def test_lstm_flops_match_hand_count(hoist, monkeypatch):
    # hoisted (x·Wx before the loop, dWx and dWh after it, over T*B rows) or not, the same products
    monkeypatch.setenv("SYMBP_HOIST", hoist)
    B, T, H, V = W.BR, W.T, W.H, W.V
    e = sb.derive(W.lstm_model()).explain(batch=B)
    fwd = T * (mm(B, V, 4 * H) + mm(B, H, 4 * H) + mm(B, H, V))  # x·Wx, h·Wh, h·Why
    # dWx, dWh, dH, dWhy, dH_out
    bwd = T * (mm(V, B, 4 * H) + mm(H, B, 4 * H) + mm(B, 4 * H, H) + mm(H, B, V) + mm(B, V, H))
    assert products(e) == {"forward": fwd, "backward": bwd}
    assert fwd + bwd == 587_202_560  # the 587 MFLOP
    (loop,) = e.data["loops"]
    # saved per step: h and c in, the three gates, tanh(g) and tanh(c): 7 H-wide rows per example
    # (not z, 4H more: the gate slices' gradient only needs its shape)
    assert loop["T"] == T and loop["saved_bytes_per_step"] == B * 7 * H * 4
    assert loop["saved_bytes"] == T * loop["saved_bytes_per_step"]


def _rnn(T, H=8, F=3, truncate=None):
    m = sb.Model("rnn")
    s, y = m.input("s", (T, F)), m.input("y", (T,), dtype="int64")
    Wx, Wh = m.param("Wx", (F, H)), m.param("Wh", (H, H))

    def step(h, x_t):
        h = sb.tanh(x_t @ Wx + h @ Wh)
        return h, h

    _, hs = sb.scan(step, s, sb.zeros((H,)), truncate=truncate)
    m.minimize(sb.softmax_cross_entropy(hs @ m.param("Wy", (H, 4)), y))
    return m


@pytest.mark.parametrize("hoist", ["1", "0"])
def test_recurrence_memory_and_work_grow_with_T(hoist, monkeypatch):
    monkeypatch.setenv("SYMBP_HOIST", hoist)  # before deriving: the step is hoisted when it is traced
    a, b = (sb.derive(_rnn(T)).explain(batch=5) for T in (4, 8))
    (la,), (lb,) = a.data["loops"], b.data["loops"]
    assert la["saved_bytes_per_step"] == lb["saved_bytes_per_step"] > 0
    assert (la["saved_bytes"], lb["saved_bytes"]) == (4 * la["saved_bytes_per_step"], 8 * la["saved_bytes_per_step"])
    assert products(b) == {k: 2 * v for k, v in products(a).items()}
    # B = 5, T = 8, F = 3, H = 8. Per step: x_t·Wx and its dWx = x_tᵀ dz_t are 2·5·3·8 = 240 each,
    # h·Wh, dWh = h_{t-1}ᵀ dz_t and dh = dz_t Whᵀ 2·5·8·8 = 640 each; after the loop dWy and
    # dL/dhs are 2·40·8·4 each. Hoisted or not, the backward runs each product once per step:
    xw, hw, outside = mm(5, 3, 8), mm(5, 8, 8), 2 * mm(5 * 8, 8, 4)
    assert products(b)["backward"] == outside + 8 * (xw + 2 * hw) == 17_280
    # a truncated reverse loop runs its cell once per step of each window: (k1, k2) = (2, 4) on
    # T = 8 reaches back 4 steps from each of 4 chunks (2 + 4 + 4 + 4 = 14 cell runs, not 8).
    t = sb.derive(_rnn(8, truncate=(2, 4))).explain(batch=5)
    if hoist == "1":
        # Only dh stays in the cell (14 runs). dWx is the outer product xsᵀ·dus over the T steps'
        # cotangents, and dWh one product over the T stacked steps (cotangents accumulated where
        # windows overlap) after the loop: both once per step, not once per cell run.
        assert products(t)["backward"] == outside + 8 * (xw + hw) + 14 * hw == 21_120
    else:
        assert products(t)["backward"] == outside + 14 * (xw + 2 * hw) == 26_400


def test_every_op_has_a_flop_rule_and_views_match_the_backends():
    from codegen.cython.emitter import VIEWS as CYTHON_VIEWS
    from codegen.numpy.emitter import VIEWS as NUMPY_VIEWS

    missing = {k for k, o in OPS.items() if o.kind != "elementwise"} - set(FLOPS)
    assert not missing, f"ops with no FLOP rule in symbp.show.cost.FLOPS: {sorted(missing)}"
    assert VIEW_OPS == set(NUMPY_VIEWS) == set(CYTHON_VIEWS)


def _buffer_bytes(x) -> int:
    if isinstance(x, np.ndarray):
        return x.nbytes
    return sum(_buffer_bytes(i) for i in x) if isinstance(x, (list, tuple)) else 0


def _step(d, backend, B, rng):
    tr = sb.compile(d, backend=backend)
    data = {k: (rng.integers(0, 4, (B, *n.shape[1:])) if n.dtype == "int64"
                else rng.standard_normal((B, *n.shape[1:])).astype(np.float32)) for k, n in d.inputs.items()}
    tr.step(**data)
    return tr.workspace.batches[B]


def test_peak_bytes_are_what_the_generated_code_allocates(rng):
    B = 6
    m = sb.Model("small")
    x, y = m.input("x", (5,)), m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (5, 16)) + m.param("b1", (16,)))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (16, 4)), y))
    d = sb.derive(m)
    peak = d.explain(batch=B).data["peak_bytes"]
    mem = _step(d, "numpy", B, rng)
    assert peak == _buffer_bytes(mem["gradients"][0])  # the schedule's buffers, not kernel temporaries
    # the Cython module allocates the same plan, plus one int64 pair recording a bad label
    mem = _step(d, "cython", B, rng)
    assert _buffer_bytes(mem[0][0]) == peak + 16
    assert sb.derive(m).explain(batch=B, dtype="float64").data["peak_bytes"] > peak


@pytest.mark.parametrize("hoist", ["1", "0"])
@pytest.mark.parametrize("truncate", [None, (2, 4)])
def test_peak_bytes_count_a_loops_arrays(hoist, truncate, rng, monkeypatch):
    monkeypatch.setenv("SYMBP_HOIST", hoist)
    B = 3
    d = sb.derive(_rnn(6, truncate=truncate))
    peak = d.explain(batch=B).data["peak_bytes"]
    mem = _step(d, "numpy", B, rng)
    # the step's buffers, then each loop's: its results and saved residuals (the reverse loop's:
    # the cotangents, and hoisted, dWh's sides stacked over t), the cell's buffers and two per
    # carry; every table's kernel temporaries (scratch) are left out
    got = _buffer_bytes(mem["gradients"][0])
    got += sum(_buffer_bytes(v[:2]) + _buffer_bytes(v[3]) for k, v in mem.items() if k[0] in ("scan", "scan_bwd"))
    assert peak == got


def test_explain_prints_a_table_and_names_bad_arguments():
    d = sb.derive(W.lstm_model())
    text = str(d.explain(batch=32, optimizer=sb.optim.Adam()))
    for part in ("forward", "backward", "update", "parameters", "optimiser state", "step buffers",
                 "costliest ops", "recurrence 'scan'", "x T = 32"):
        assert part in text
    assert d.explain(batch=32, optimizer=sb.optim.Adam()).data["optimizer_state_bytes"] == 2 * 4 * 107_072
    with pytest.raises(sb.SymbpError, match=r"explain\(batch=...\).*got 0"):
        d.explain(batch=0)
    with pytest.raises(sb.SymbpError, match="unknown dtype 'float16'"):
        d.explain(batch=2, dtype="float16")


def test_cli_explain(capsys):
    from symbp.cli import main

    model = str(ROOT / "examples" / "mlp_model.py")
    assert main(["explain", model, "--batch", "128"]) == 0
    text = capsys.readouterr().out
    assert "model 'mlp': one training step at batch 128" in text and "dot x · W1" in text
    assert main(["explain", model, "--batch", "128", "--optimizer", "adam", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimizer"] == "Adam" and data["flops"]["forward"] > 2 * 128 * 64 * 32
    assert main(["explain", model, "--batch", "-1"]) == 1
    assert "symbp explain: explain(batch=...)" in capsys.readouterr().err


def test_readme_shows_real_output(capsys):
    from symbp.cli import main

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Before compiling: what a step costs"):]
    shown = section[section.index("```text\n") + 8:section.index("```\n", section.index("```text\n") + 8)]
    assert main(["explain", str(ROOT / "examples" / "mlp_model.py"), "--batch", "128"]) == 0
    assert capsys.readouterr().out == shown


def test_a_reduction_in_a_step_saves_no_tensor_for_its_shape():
    # an RMS-normalised cell: mean(a*a)'s gradient broadcasts back to the shape of a*a, which
    # broadcast_like keeps as an attribute, so a*a is not saved at every step (it was, 25 % more)
    T, F, H, B = 16, 8, 32, 8
    m = sb.Model("rms_rnn")
    x, y = m.input("x", (T, F)), m.input("y", (T,), dtype="int64")
    W, U = m.param("W", (F, H)), m.param("U", (H, H))

    def step(h, x_t):
        a = sb.tanh(x_t @ W + h @ U)
        h = a / sb.sqrt(sb.mean(a * a, axis=-1, keepdims=True) + 1e-5)
        return h, h

    _, hs = sb.scan(step, x, sb.zeros((H,)))
    m.minimize(sb.softmax_cross_entropy(hs @ m.param("Wy", (H, 4)), y))
    (loop,) = sb.derive(m).explain(batch=B).data["loops"]
    # h in, tanh(.) and the normalised h (H wide each), the root mean square (1 wide)
    assert loop["saved_bytes_per_step"] == B * (3 * H + 1) * 4
