"""Inference: a model with outputs and no loss compiles for predict only; predict(outputs=)
computes just what those outputs need; stateful recurrences keep a predict state of their own,
so feeding a sequence a step at a time gives the outputs of feeding it whole."""

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.inference import NoLoss
from codegen.runtime.trainer import DataError

F, H, T, B = 3, 4, 5, 2
KINDS = ("rnn", "lstm", "gru", "scan")


def recurrences(steps: int, loss: bool) -> sb.Model:
    """SimpleRNN, LSTM, GRU and a hand-written two-carry scan, all stateful, side by side over
    one input sequence, each a per-step output; "z" reads only the second input."""
    m = sb.Model("rec")
    s, u = m.input("s", (steps, F)), m.input("u", (2,))
    outs = {"rnn": sb.layers.SimpleRNN(H, stateful=True, name="rnn")(m, s),
            "lstm": sb.layers.LSTM(H, stateful=True, name="lstm")(m, s),
            "gru": sb.layers.GRU(H, stateful=True, name="gru")(m, s)}
    W, V = m.param("W", (F, H)), m.param("V", (H, H))

    def step(carry, x):
        a, b = carry  # b lags a by one step: the state is more than the last output
        n = sb.tanh(x @ W + a @ V + 0.5 * b)
        return (n, a), n * b

    _, outs["scan"] = sb.scan(step, s, (sb.zeros((H,)), sb.zeros((H,))), stateful=True, label="hand")
    for k in KINDS:
        m.output(k, outs[k])
    z = m.output("z", u @ m.param("Wu", (2, 3)))
    if loss:
        m.minimize(sum(sb.mean(o * o) for o in outs.values()) + sb.mean(z * z))
    return m


@pytest.fixture(scope="module", params=["numpy", "cython"])
def trainers(request):
    """(whole: T steps with a loss, step: one step and no loss, sharing whole's parameters)."""
    whole = sb.compile(sb.derive(recurrences(T, True)), backend=request.param, dtype="float64", seed=1,
                       optimizer=sb.optim.SGD(lr=0.1))
    step = sb.compile(sb.derive(recurrences(1, False)), backend=request.param, dtype="float64")
    return whole, step


def by_steps(step, xs) -> dict:
    """Predict a (B, n, F) sequence one step at a time: the per-step outputs, concatenated."""
    got = [step.predict(s=xs[:, t:t + 1], u=np.zeros((len(xs), 2))) for t in range(xs.shape[1])]
    return {k: np.concatenate([g[k] for g in got], axis=1) for k in KINDS}


def test_a_step_at_a_time_equals_whole_apart_from_training_state(trainers, rng):
    whole, step = trainers
    whole.reset_state()
    data = {"s": rng.normal(size=(B, T, F)), "u": rng.normal(size=(B, 2))}
    whole.step(**data)
    whole.step(**data)  # the training state is now two batches in, and the weights have moved
    assert whole.carries
    for k, v in whole.params.items():
        step.params[k] = v
    step.reset_state()
    xs = rng.normal(size=(B, 2 * T, F))
    first, second = whole.predict(s=xs[:, :T], u=data["u"]), whole.predict(s=xs[:, T:], u=data["u"])
    stepped = by_steps(step, xs)
    for k in KINDS:
        np.testing.assert_allclose(np.concatenate([first[k], second[k]], axis=1), stepped[k], rtol=0, atol=1e-12,
                                   err_msg=k)
    before = {k: [a.copy() for a in v] for k, v in whole.carries.items()}
    whole.predict(s=xs[:, :T], u=data["u"])  # predict leaves training's state alone
    assert all(np.array_equal(a, b) for k in before for a, b in zip(before[k], whole.carries[k]))
    # reset_state starts both over: predict gives its first answer again
    whole.reset_state()
    assert not whole.carries and not whole.predict_carries
    again = whole.predict(s=xs[:, :T], u=data["u"])
    assert all(np.array_equal(again[k], first[k]) for k in KINDS)


def test_a_new_batch_size_starts_predict_over(trainers, rng):
    whole, step = trainers
    xs = rng.normal(size=(3, T, F))
    step.reset_state()
    by_steps(step, rng.normal(size=(B, 3, F)))  # state for a batch of B
    assert {v[0].shape[0] for v in step.predict_carries.values()} == {B}
    whole.reset_state()
    fresh = whole.predict(s=xs, u=np.zeros((3, 2)))
    stepped = by_steps(step, xs)  # batch 3: every recurrence starts from its initial state
    for k in KINDS:
        np.testing.assert_allclose(stepped[k], fresh[k], rtol=0, atol=1e-12, err_msg=k)


def test_outputs_computes_only_what_they_need(trainers, rng):
    whole, step = trainers
    xs, u = rng.normal(size=(B, 1, F)), rng.normal(size=(B, 2))
    step.reset_state()
    full = step.predict(s=xs, u=u)
    got = step.predict(u=u, outputs=["z"])  # s is not needed
    assert list(got) == ["z"] and np.array_equal(got["z"], full["z"])
    module, _ = step._predictors[("z",)]
    assert module.NEEDS == {"predict": ["u"]} and list(module.OUTPUTS) == ["z"]
    assert not hasattr(module, "gradients")
    step.reset_state()
    got = step.predict(s=xs, outputs=["gru", "lstm"])  # u is not needed
    assert sorted(got) == ["gru", "lstm"] and all(np.array_equal(got[k], full[k]) for k in got)
    with pytest.raises(DataError, match=r"unknown output\(s\) 'prob'; the model's outputs are rnn, lstm"):
        step.predict(s=xs, outputs=["prob"])
    with pytest.raises(DataError, match="missing input 'u'"):
        step.predict(s=xs)


def test_a_model_without_a_loss_predicts_only(trainers, rng):
    _, step = trainers
    data = {"s": rng.normal(size=(B, 1, F)), "u": rng.normal(size=(B, 2))}
    for call in (lambda: step.loss(**data), lambda: step.gradients(**data), lambda: step.step(**data),
                 lambda: step.fit(data, progress=False), lambda: step.evaluate(data)):
        with pytest.raises(NoLoss, match="model 'rec' has no loss: it was compiled for inference"):
            call()
    assert not hasattr(step.kernels, "gradients") and "Inference for the model 'rec'" in step.source


def test_a_model_needs_a_loss_or_outputs():
    m = sb.Model("empty")
    m.input("x", (2,))
    with pytest.raises(sb.SymbpError, match="model 'empty': nothing to derive; call m.minimize"):
        sb.derive(m)


def test_a_package_predicts_with_its_own_state(tmp_path, monkeypatch, rng, capsys):
    """A standalone package of an inference model (no loss) keeps predict's state across calls
    and resets it, like sb.compile's trainers (the same runtime, copied: the Cython kernels'
    state handling is the in-process one above); its self-test checks its outputs."""
    backend = "numpy"
    out = sb.build(sb.derive(recurrences(2, False)), tmp_path / "pkg", backend=backend, dtype="float64", seed=2,
                   name=f"rec_{backend}")
    monkeypatch.syspath_prepend(str(out / "src"))
    import importlib

    pkg = importlib.import_module(f"rec_{backend}")
    main = importlib.import_module(f"rec_{backend}.__main__")
    tr = pkg.trainer()
    whole = sb.compile(sb.derive(recurrences(2 * T, False)), dtype="float64", params=pkg.initial_weights())
    xs, u = rng.normal(size=(B, 2 * T, F)), rng.normal(size=(B, 2))
    want = whole.predict(s=xs, u=u)
    for _ in range(2):  # reset_state starts over
        tr.reset_state()
        got = [tr.predict(s=xs[:, t:t + 2], u=u) for t in range(0, 2 * T, 2)]
        for k in KINDS:
            np.testing.assert_allclose(np.concatenate([g[k] for g in got], axis=1), want[k], rtol=0, atol=1e-12)
    assert sorted(tr.predict(s=xs[:, :2], u=u, outputs=["z", "gru"])) == ["gru", "z"]  # all inputs: no compiler
    with pytest.raises(pkg.NoLoss, match="has no loss"):
        tr.step(s=xs[:, :2], u=u)
    assert main.selftest() and "no loss (inference only)" in capsys.readouterr().out


def test_the_design_snippet_runs_verbatim(rng):
    """The inference lines of DESIGN.md's "Sequences" block, as written there."""
    m = sb.Model("design")
    ids = m.input("ids", (T,), dtype="int64")
    logits = sb.layers.Dense(6, name="out")(sb.layers.Embedding(9, 4, name="emb")(ids))
    batch = {"ids": rng.integers(0, 9, (B, T))}
    m.output("probs", sb.softmax(logits))                      # a model with outputs and no loss
    tr = sb.compile(sb.derive(m))                              #   compiles for inference: predict only
    tr.predict(**batch)                                        # {output name: array}
    tr.predict(**batch, outputs=["probs"])                     # computes only what those need
    assert tr.predict(**batch)["probs"].shape == (B, T, 6)
    assert np.array_equal(tr.predict(**batch, outputs=["probs"])["probs"], tr.predict(**batch)["probs"])


def test_gradcheck_says_an_inference_model_has_no_loss():
    m = sb.Model("inf")
    m.output("y", m.input("x", (2,)) @ m.param("W", (2, 2)))
    with pytest.raises(sb.SymbpError, match="model 'inf' has no loss .*: no gradients to check"):
        sb.gradcheck(m, {"x": np.ones((1, 2))})
