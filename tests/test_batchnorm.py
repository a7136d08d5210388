"""BatchNorm: its derivative, PyTorch's formulas in training and inference mode, the running
statistics as buffers (changed only by step, saved, loaded, in packages), and its errors."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

import symbp as sb
from codegen.runtime import DataError

SHAPES = {"dense": (3,), "conv": (2, 3, 4)}  # per example: features (F,) or NHWC (H, W, C)
BACKENDS = ["numpy", "cython"]
# what feeds BatchNorm, so the gradient of p goes through the whole normalisation: x @ p for
# dense features, x * p per position for conv ones (a per-feature scale would normalise away)
P_SHAPES = {"dense": (3, 3), "conv": (2, 3, 4)}


def pre(kind, x, p):
    return x @ p if kind == "dense" else x * p


def torch_train(x, gamma, beta, mean, var, momentum=0.1, eps=1e-5):
    """torch.nn.BatchNorm{1,2}d in training mode, from its documented formulas (NHWC here):
    normalise with the biased batch variance; update the running variance with the unbiased one."""
    axes = tuple(range(x.ndim - 1))
    mu, v = x.mean(axes), x.var(axes)
    n = x.size // x.shape[-1]
    y = (x - mu) / np.sqrt(v + eps) * gamma + beta
    return y, (1 - momentum) * mean + momentum * mu, (1 - momentum) * var + momentum * v * n / (n - 1)


def torch_eval(x, gamma, beta, mean, var, eps=1e-5):
    """torch.nn.BatchNorm{1,2}d in inference mode (model.eval()): the running statistics."""
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def bn_model(kind: str, momentum=0.1, eps=1e-5) -> sb.Derivation:
    """BatchNorm of pre(x, p), then loss = mean(tanh(y) * c); y is also an output."""
    m = sb.Model(f"bn_{kind}")
    x = m.input("x", SHAPES[kind])
    c = m.input("c", SHAPES[kind])
    y = sb.layers.BatchNorm(momentum=momentum, eps=eps, name="bn")(pre(kind, x, m.param("p", P_SHAPES[kind])))
    m.output("y", y)
    m.minimize(sb.mean(sb.tanh(y) * c))
    return sb.derive(m)


@functools.cache
def trainer(kind: str, backend: str):
    """One compiled float64 trainer per (kind, backend): compiling Cython costs seconds."""
    return sb.compile(bn_model(kind), backend=backend, dtype="float64", optimizer=sb.optim.SGD(lr=0.0))


def fresh(kind: str, backend: str, rng):
    """The cached trainer, reset: random p, gamma, beta; running statistics at their init."""
    tr = trainer(kind, backend)
    c = SHAPES[kind][-1]
    tr.params["p"] = rng.uniform(0.5, 1.5, P_SHAPES[kind])
    tr.params["bn_gamma"] = rng.uniform(0.5, 1.5, c)
    tr.params["bn_beta"] = rng.normal(0, 1, c)
    tr.buffers["bn_mean"], tr.buffers["bn_var"] = np.zeros(c), np.ones(c)
    return tr


def batch(kind: str, rng, n=6) -> dict:
    return {"x": rng.normal(2.0, 3.0, (n, *SHAPES[kind])), "c": rng.normal(0, 1, (n, *SHAPES[kind]))}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", SHAPES)
def test_gradients_match_finite_differences(kind, backend, rng):
    tr = fresh(kind, backend, rng)
    errors = tr.finite_difference_errors(batch(kind, rng), eps=1e-6)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", SHAPES)
def test_training_and_inference_match_pytorchs_formulas(kind, backend, rng):
    tr = fresh(kind, backend, rng)
    p, gamma, beta = (tr.params[k].copy() for k in ("p", "bn_gamma", "bn_beta"))
    mean, var = tr.buffers["bn_mean"].copy(), tr.buffers["bn_var"].copy()
    for n in (6, 4, 7):  # several steps, batch sizes differing (n in the unbiased variance)
        b = batch(kind, rng, n)
        y, new_mean, new_var = torch_train(pre(kind, b["x"], p), gamma, beta, mean, var)
        want = np.mean(np.tanh(y) * b["c"])
        kept = tr.buffers["bn_mean"].copy()
        np.testing.assert_allclose(tr.loss(**b), want, rtol=1e-12)
        tr.gradients(**b)  # neither loss nor gradients moves the running statistics
        np.testing.assert_array_equal(tr.buffers["bn_mean"], kept)
        np.testing.assert_allclose(tr.step(**b), want, rtol=1e-12)
        mean, var = new_mean, new_var
        np.testing.assert_allclose(tr.buffers["bn_mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(tr.buffers["bn_var"], var, rtol=1e-12)
        b, kept = batch(kind, rng, 3), tr.buffers["bn_var"].copy()
        got = tr.predict(x=b["x"])["y"]  # inference mode: the running statistics, which predict leaves
        np.testing.assert_allclose(got, torch_eval(pre(kind, b["x"], p), gamma, beta, mean, var), rtol=1e-10)
        np.testing.assert_array_equal(tr.buffers["bn_var"], kept)
        want = np.mean(np.tanh(torch_eval(pre(kind, b["x"], p), gamma, beta, mean, var)) * b["c"])
        np.testing.assert_allclose(tr.evaluate(b)["loss"], want, rtol=1e-10)  # evaluate: inference mode too
    assert not np.allclose(var, 1.0)  # the statistics did move: the comparison above was not of inits


def test_momentum_and_eps_are_pytorchs(rng):
    tr = sb.compile(bn_model("conv", momentum=0.3, eps=0.5), dtype="float64")
    tr.params["p"] = np.ones(P_SHAPES["conv"])
    b = batch("conv", rng)
    c = SHAPES["conv"][-1]
    y, mean, var = torch_train(b["x"], np.ones(c), np.zeros(c), np.zeros(c), np.ones(c), 0.3, 0.5)
    np.testing.assert_allclose(tr.step(**b), np.mean(np.tanh(y) * b["c"]), rtol=1e-12)
    np.testing.assert_allclose(tr.buffers["bn_var"], var, rtol=1e-12)


def test_save_and_load_keep_the_running_statistics(tmp_path, rng):
    tr = sb.compile(bn_model("conv"), dtype="float64", optimizer=sb.optim.Adam(lr=0.01))
    for _ in range(3):
        tr.step(**batch("conv", rng))
    tr.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:
        np.testing.assert_array_equal(f["buffer.bn_var"], tr.buffers["bn_var"])
    again = sb.compile(bn_model("conv"), dtype="float64", optimizer=sb.optim.Adam(lr=0.01))
    again.load(tmp_path / "w.npz", weights_only=True)  # the running statistics are weights
    for k in tr.buffers:
        np.testing.assert_array_equal(again.buffers[k], tr.buffers[k])
    b = batch("conv", rng)
    np.testing.assert_array_equal(again.predict(x=b["x"])["y"], tr.predict(x=b["x"])["y"])


def test_an_interrupted_run_resumes_with_its_running_statistics(tmp_path, rng):
    data = batch("dense", rng, 40)
    kw = dict(epochs=2, batch_size=8, progress=False)

    def trainer_():
        return sb.compile(bn_model("dense"), dtype="float64", optimizer=sb.optim.SGD(lr=0.1))

    whole = trainer_()
    whole.fit(data, **kw)
    first, real, calls = trainer_(), None, [0]
    real = first._step

    def stop_after_7(b):  # as if the run was killed at step 8: the last checkpoint is after step 5
        calls[0] += 1
        if calls[0] > 7:
            raise KeyboardInterrupt
        return real(b)

    first._step = stop_after_7
    with pytest.raises(KeyboardInterrupt):
        first.fit(data, checkpoint=tmp_path / "c.npz", checkpoint_every=5, **kw)
    resumed = trainer_()
    resumed.fit(data, resume=tmp_path / "c.npz", **kw)
    assert resumed.t == whole.t == 10
    for k in whole.buffers:
        np.testing.assert_array_equal(resumed.buffers[k], whole.buffers[k])


def test_weights_files_without_or_with_wrong_buffers_are_refused_by_name(tmp_path, rng):
    tr = sb.compile(bn_model("dense"), dtype="float64")
    tr.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(tmp_path / "lost.npz", **{k: v for k, v in arrays.items() if k != "buffer.bn_var"})
    with pytest.raises(DataError, match=r"lost.npz: the buffer\(s\) 'buffer.bn_var' are missing"):
        tr.load(tmp_path / "lost.npz")
    np.savez(tmp_path / "shape.npz", **{**arrays, "buffer.bn_var": np.ones(4)})
    with pytest.raises(DataError, match=r"shape.npz: buffer 'buffer.bn_var' has shape \(4,\)"):
        tr.load(tmp_path / "shape.npz")
    with pytest.raises(DataError, match=r"buffer 'bn_mean' has shape \(3,\), got an array of shape \(2,\)"):
        tr.buffers["bn_mean"] = np.zeros(2)
    with pytest.raises(KeyError, match="no buffer 'bn_W'; the buffers are bn_mean, bn_var"):
        tr.buffers["bn_W"] = np.zeros(3)


def test_a_standalone_package_carries_the_running_statistics(tmp_path, monkeypatch, rng):
    d = bn_model("dense")
    sb.build(d, tmp_path / "pkg", dtype="float64", seed=1, name="bn_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg" / "src"))
    import bn_pkg

    tr, ref = bn_pkg.trainer(), sb.compile(d, dtype="float64", seed=1)
    b = batch("dense", rng)
    for t in (tr, ref):
        t.step(**b)
    np.testing.assert_array_equal(tr.buffers["bn_var"], ref.buffers["bn_var"])
    assert not np.allclose(tr.buffers["bn_var"], 1.0)
    tr.save(tmp_path / "t.npz")
    again = bn_pkg.trainer(tmp_path / "t.npz")
    np.testing.assert_array_equal(again.buffers["bn_mean"], tr.buffers["bn_mean"])
    np.testing.assert_array_equal(again.predict(x=b["x"])["y"], ref.predict(x=b["x"])["y"])
    from bn_pkg.__main__ import selftest

    assert selftest()  # the package's own check of its gradients (with the running statistics as they are)
    for k in [k for k in sys.modules if k == "bn_pkg" or k.startswith("bn_pkg.")]:
        del sys.modules[k]


@pytest.mark.parametrize("shape, why", [
    ((), r"layer 'bn': BatchNorm takes float dense features \(batch, F\) or NHWC conv features "
         r"\(batch, H, W, C\), normalising every axis but the last; got input 'x' \(batch,\)"),
    ((5, 3), r"layer 'bn': .* got input 'x' \(batch, 5, 3\); reshape a sequence to \(batch, T \* F\) or use LayerNorm"),
])
def test_a_shape_that_is_not_features_is_named(shape, why):
    m = sb.Model("bad")
    with pytest.raises(sb.SymbpError, match=why):
        sb.layers.BatchNorm(name="bn")(m.input("x", shape))


def test_bad_options_and_names_are_refused():
    with pytest.raises(sb.SymbpError, match=r"layer 'bn': momentum must be a number in \[0, 1\], got 1.5"):
        sb.layers.BatchNorm(momentum=1.5, name="bn")
    with pytest.raises(sb.SymbpError, match=r"layer 'bn': eps must be a number in \(0, 1\], got 0"):
        sb.layers.BatchNorm(eps=0, name="bn")
    m = sb.Model("clash")
    x = m.input("x", (3,))
    m.param("bn_mean", (3,))
    with pytest.raises(sb.SymbpError, match="buffer name 'bn_mean' is already used by a parameter"):
        sb.layers.BatchNorm(name="bn")(x)
    with pytest.raises(sb.SymbpError, match="buffer name 'bn_var\\(' is not a valid Python identifier"):
        m.buffer("bn_var(", (3,))


def test_a_failed_step_leaves_the_running_statistics(rng):
    tr = sb.compile(bn_model("dense"), dtype="float64")
    b = batch("dense", rng)
    b["c"][0, 0] = np.nan
    with pytest.raises(FloatingPointError):
        tr.step(**b)
    np.testing.assert_array_equal(tr.buffers["bn_var"], np.ones(3))


def load_cnn_example():
    from tests.helpers import example

    return example("cnn_digits", "cnn_digits_regularised")


def test_the_regularised_cnn_example_learns_and_its_gradients_check_out(rng):
    from threadpoolctl import threadpool_limits

    example = load_cnn_example()
    r = sb.gradcheck(example.build(filters=4, regularise=True),
                     {"x": rng.uniform(0, 1, (3, 8, 8, 1)), "y": np.array([0, 5, 9])}, tolerance=1e-5, max_entries=16)
    assert r.ok, str(r)
    with threadpool_limits(limits=1, user_api="blas"):  # as test_conv_example: BLAS threads fight on 2 cores
        assert example.main(epochs=3, regularise=True) >= 0.93


def test_a_batch_of_one_example_is_refused_by_step_for_dense_features_only(rng):
    dense = sb.compile(bn_model("dense"), dtype="float64")
    b = batch("dense", rng, 1)
    with pytest.raises(DataError, match=r"step\(\): layer 'bn' normalises each feature over the batch and needs "
                                        r"more than one value of it; a batch of 1 gives 1"):
        dense.step(**b)
    assert dense.t == 0 and np.isfinite(dense.buffers["bn_var"]).all()
    dense.predict(x=b["x"])  # inference mode: one example is fine
    conv = sb.compile(bn_model("conv"), dtype="float64")
    conv.step(**batch("conv", rng, 1))  # 2 x 3 values per channel in one example
    assert np.isfinite(conv.buffers["bn_var"]).all()


def test_batchnorm_inside_a_recurrence_is_refused_by_name():
    m = sb.Model("loop")
    bn = sb.layers.BatchNorm(name="bn")

    def step(h, x):
        h = sb.tanh(bn(m, x) + h)
        return h, h

    with pytest.raises(sb.SymbpError, match="buffer 'bn_mean' cannot be updated from inside a recurrence"):
        sb.scan(step, m.input("s", (4, 3)), sb.zeros((3,)))


def test_early_stopping_restores_the_running_statistics_of_the_best_epoch(tmp_path, rng):
    data, val = batch("dense", rng, 32), batch("dense", rng, 16)
    kw = dict(batch_size=8, progress=False, validation=val)

    def trainer_():
        return sb.compile(bn_model("dense"), dtype="float64", optimizer=sb.optim.SGD(lr=0.1))

    best = trainer_()
    es = sb.EarlyStopping(monitor="val_loss", patience=5)
    best.fit(data, epochs=3, early_stopping=es, checkpoint=tmp_path / "c.npz", **kw)
    assert es.best_epoch < 3  # (this data's val_loss rises after it) so its weights come back at the end
    first = trainer_()
    first.fit(data, epochs=es.best_epoch, **kw)
    for k in first.buffers:
        np.testing.assert_array_equal(best.buffers[k], first.buffers[k])
    with np.load(tmp_path / "c.npz") as f:
        np.testing.assert_array_equal(f["_best.buffer.bn_var"], first.buffers["bn_var"])
