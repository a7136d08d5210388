"""State of recurrences: one slot per loop, advanced by training steps only, and saved with
the weights so an interrupted run resumes bit for bit."""

import numpy as np
import pytest

import symbp as sb

F, H, C, T = 2, 3, 4, 3


def two_loops() -> sb.Model:
    """Two unlabelled stateful scans of different widths, the second over the first's outputs."""
    m = sb.Model("two")
    s, y = m.input("s", (T, F)), m.input("y", (2,))
    W, U = m.param("W", (F, H)), m.param("U", (H, 2))
    _, seq = sb.scan(lambda h, x: (sb.tanh(x @ W + h), sb.tanh(x @ W + h)), s, sb.zeros((H,)), stateful=True)
    h2, _ = sb.scan(lambda h, x: (sb.tanh(x @ U + h), None), seq, sb.zeros((2,)), stateful=True)
    m.minimize(sb.mse(h2, y))
    return m


def test_each_loop_has_its_own_state_and_diagnostics(rng):
    tr = sb.compile(sb.derive(two_loops()), dtype="float64", optimizer=sb.optim.SGD(lr=0.0))
    batch = {"s": rng.normal(size=(4, T, F)), "y": rng.normal(size=(4, 2))}
    norms = tr.gradient_norms_through_time(**batch)
    assert sorted(norms) == ["scan", "scan_2"] and all(v.shape == (T,) for v in norms.values())
    first = tr.step(**batch)
    assert {k: [a.shape for a in v] for k, v in tr.carries.items()} == {"scan": [(4, H)], "scan_2": [(4, 2)]}
    assert tr.step(**batch) != first  # started from the carried state
    tr.reset_state()
    assert tr.step(**batch) == first
    # Default labels are made unique per model, the same way every time.
    assert sb.compile(sb.derive(two_loops()), dtype="float64").source == \
        sb.compile(sb.derive(two_loops()), dtype="float64").source


def classifier():
    """A stateful loop with a class output: fit measures accuracy (predict) before each step."""
    m = sb.Model("cls")
    s, y = m.input("s", (T, F)), m.input("y", (), dtype="int64")
    W = m.param("W", (F, H))
    hT, _ = sb.scan(lambda h, x: (sb.tanh(x @ W + h), None), s, sb.zeros((H,)), stateful=True, label="rnn")
    z = sb.layers.Dense(C, name="out")(m, hT)
    m.output("logits", z)
    m.minimize(sb.softmax_cross_entropy(z, y))
    return sb.compile(sb.derive(m), dtype="float64", optimizer=sb.optim.Adam(lr=0.05), seed=4)


def test_only_steps_advance_the_state_and_checkpoints_keep_it(rng, tmp_path):
    data = {"s": rng.normal(size=(8, T, F)), "y": rng.integers(0, C, 8)}
    val = {"s": rng.normal(size=(5, T, F)), "y": rng.integers(0, C, 5)}
    opts = {"batch_size": 4, "progress": False, "validation": val}
    whole = classifier().fit(data, epochs=3, **opts)
    ck = str(tmp_path / "ck.npz")
    classifier().fit(data, epochs=1, checkpoint=ck, **opts)
    resumed = classifier().fit(data, epochs=3, resume=ck, **opts)
    assert resumed["step_loss"] == whole["step_loss"]  # bit for bit
    assert resumed["val_loss"] == whole["val_loss"]

    tr = classifier()
    tr.step(**data)
    carried = tr.carries["rnn"][0].copy()
    tr.loss(**data), tr.predict(**data), tr.gradients(**data), tr.evaluate(data, batch_size=4)
    np.testing.assert_array_equal(tr.carries["rnn"][0], carried)
    tr.save(tmp_path / "w.npz")
    other = classifier()
    other.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(other.carries["rnn"][0], carried)
    assert other.loss(**data) == tr.loss(**data)


def test_a_failed_step_leaves_the_state(rng):
    tr = classifier()
    data = {"s": rng.normal(size=(4, T, F)), "y": rng.integers(0, C, 4)}
    tr.step(**data)
    carried = tr.carries["rnn"][0].copy()
    bad = {"s": np.full((4, T, F), np.nan), "y": data["y"]}
    with pytest.raises(FloatingPointError):
        tr.step(**bad)
    np.testing.assert_array_equal(tr.carries["rnn"][0], carried)


def test_trainers_sharing_a_compiled_module_keep_their_own_state(rng):
    # A compiled module is one per source (the Cython backend's cache hands the same module to
    # every compile of a model; a standalone package's trainers share its kernels): the carried
    # state must belong to each trainer, not to the module.
    from codegen.runtime.trainer import Trainer

    tr1 = classifier()
    tr2 = Trainer(tr1.kernels, dict(tr1.params), dict(tr1.hyper))
    batch = {"s": rng.normal(size=(4, T, F)), "y": rng.integers(0, C, 4)}
    before = tr2.loss(**batch)
    tr1.step(**batch)
    tr1.step(**batch)
    assert tr2.loss(**batch) == before and tr1.carries and not tr2.carries
    tr2.step(**batch)
    tr2.reset_state()
    assert tr1.carries and not tr2.carries


def test_gradcheck_refuses_truncated_loops_and_says_why(rng):
    m = sb.Model("trunc")
    s = m.input("s", (6, 3))
    h = sb.layers.GRU(4, truncate=(2, 3), return_sequences=False, name="rec")(m, s)
    m.minimize(sb.mean(h * h))
    with pytest.raises(sb.SymbpError, match=r"loop 'rec' uses truncated BPTT \(2, 3\).*truncate=None"):
        sb.gradcheck(m, {"s": rng.normal(size=(2, 6, 3))})
