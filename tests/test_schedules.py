"""Learning-rate schedules and early stopping in ``fit``: PyTorch's formulas, the rate the compiled
step uses, the stopping epoch and restored weights, and exact resume mid-schedule and mid-patience."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import symbp as sb
from codegen.runtime.schedules import Cosine, EarlyStopping, Exponential, Linear, Step, Warmup
from codegen.runtime.trainer import DataError
from tests.test_fit import _interrupt_after, classifier, data, regressor

# -- PyTorch's schedulers, as its documentation and get_lr() write them: recurrences ------------

def torch_lrs(kind: str, base: float, n: int, **kw) -> list[float]:
    """The rate of epochs 0..n-1 by torch.optim.lr_scheduler's recursive ``get_lr`` (scheduler.step()
    once an epoch; SequentialLR switches to the second scheduler with ``step(0)``, its closed form at 0)."""
    out, lr = [], base
    for e in range(n):
        if kind == "step":  # StepLR
            lr = base if e == 0 else lr * kw["gamma"] if e % kw["step_size"] == 0 else lr
        elif kind == "exp":  # ExponentialLR
            lr = base if e == 0 else lr * kw["gamma"]
        elif kind == "cos":  # CosineAnnealingLR
            lr = _cos(base, lr, e, kw["T_max"], kw["eta_min"])
        elif kind == "linear":  # LinearLR
            lr = _linear(base, lr, e, kw["start"], kw["end"], kw["total"])
        elif kind == "warmup_cos":  # SequentialLR([LinearLR(start, 1, m), CosineAnnealingLR(T_max)], [m])
            m = kw["milestone"]
            lr = _linear(base, lr, e, kw["start"], 1.0, m) if e < m else _cos(base, lr, e - m, kw["T_max"], 0.0)
        out.append(lr)
    return out


def _cos(base, lr, e, T, eta_min):  # noqa: N803
    if e == 0:
        return base
    if (e - 1 - T) % (2 * T) == 0:
        return lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
    return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - eta_min) + eta_min


def _linear(base, lr, e, start, end, total):
    if e == 0:
        return base * start
    if e > total:
        return lr
    return lr * (1 + (end - start) / (total * start + (e - 1) * (end - start)))


@pytest.mark.parametrize("schedule, kind, kw", [
    (Step(7, gamma=0.5), "step", {"step_size": 7, "gamma": 0.5}),
    (Step(1), "step", {"step_size": 1, "gamma": 0.1}),
    (Exponential(0.97), "exp", {"gamma": 0.97}),
    (Cosine(50), "cos", {"T_max": 50, "eta_min": 0.0}),
    (Cosine(37, eta_min=1e-3), "cos", {"T_max": 37, "eta_min": 1e-3}),  # past T_max it rises, as torch's
    (Linear(), "linear", {"start": 1 / 3, "end": 1.0, "total": 5}),
    (Linear(1.0, 0.05, 80), "linear", {"start": 1.0, "end": 0.05, "total": 80}),  # linear decay
    (Warmup(10, Cosine(90), start_factor=0.01), "warmup_cos", {"milestone": 10, "start": 0.01, "T_max": 90}),
])
def test_schedules_follow_torch(schedule, kind, kw):
    base, n = 0.1, 300
    ours = [schedule.lr(base, k) for k in range(n)]
    np.testing.assert_allclose(ours, torch_lrs(kind, base, n, **kw), rtol=1e-12, atol=1e-15)


def test_schedule_landmarks():
    assert Cosine(10, eta_min=0.01).lr(1.0, 10) == 0.01 and Cosine(10).lr(1.0, 20) == 1.0
    assert [Step(3, 0.5).lr(8.0, k) for k in range(7)] == [8, 8, 8, 4, 4, 4, 2]
    w = Warmup(4, Exponential(0.5), start_factor=0.25)
    assert [w.lr(1.0, k) for k in range(7)] == [0.25, 0.4375, 0.625, 0.8125, 1.0, 0.5, 0.25]
    assert [Warmup(2).lr(1.0, k) for k in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])


@pytest.mark.parametrize("make, match", [
    (lambda: Cosine(0), "Cosine: T_max must be a positive int, got 0"),
    (lambda: Step(2.5), "Step: step_size must be a positive int"),
    (lambda: Exponential(-0.5), "Exponential: gamma must be a finite number at least 0"),
    (lambda: Exponential(float("nan")), "gamma must be a finite number"),
    (lambda: Linear(start_factor=0), r"start_factor must be a finite number \(0, 1\]"),
    (lambda: Cosine(10, per="batch"), "per must be 'epoch' or 'step', got 'batch'"),
    (lambda: Warmup(5, Cosine(10, per="step")), "counts per 'epoch' but then=Cosine.*counts per 'step'"),
    (lambda: Warmup(5, then="cosine"), "then must be a schedule"),
    (lambda: EarlyStopping(patience=-1), "patience must be a non-negative int"),
    (lambda: EarlyStopping(mode="up"), "mode must be 'auto', 'min' or 'max'"),
    (lambda: EarlyStopping(min_delta=-0.1), "min_delta must be a finite number at least 0"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(DataError, match=match):
        make()


def test_names_on_the_face():
    assert sb.schedules.Cosine is Cosine and sb.EarlyStopping is EarlyStopping
    from symbp import schedules

    assert schedules.Warmup is Warmup
    # they are the runtime's, imported when first used: import symbp alone still loads no codegen
    out = subprocess.run([sys.executable, "-c", "import sys, symbp; print('codegen' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the rate the compiled step uses ----------------------------------------------------------

def ramp() -> sb.Derivation:
    """loss = mean(a*u + b*(u - t)^2), u = x @ W. Training data (x=1, a=1, b=0): loss = W and
    dL/dW = 1, so SGD lowers W by exactly the step's rate. Validation data (x=1, a=0, b=1,
    t=T): val_loss = (W - T)^2, a curve with its minimum where W passes T."""
    m = sb.Model("ramp")
    x, a, b, t = (m.input(k, (1,)) for k in "xabt")
    u = x @ m.param("W", (1, 1))
    m.minimize(sb.mean(a * u + b * (u - t) ** 2))
    return sb.derive(m)


def ramp_data(n: int, val: bool = False, target: float = 0.0) -> dict:
    one, zero = np.ones((n, 1)), np.zeros((n, 1))
    return {"x": one, "a": zero if val else one, "b": one if val else zero, "t": np.full((n, 1), target)}


@pytest.fixture(scope="module")
def ramp_model():
    return ramp()


def ramp_trainer(d, backend="numpy", lr=0.5):
    return sb.compile(d, backend=backend, optimizer=sb.optim.SGD(lr=lr), dtype="float64", params={"W": [[0.0]]})


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("schedule", [Warmup(5, Cosine(20, eta_min=0.01, per="step"), start_factor=0.1, per="step"),
                                      Step(2, gamma=0.5)])
def test_compiled_step_uses_the_scheduled_rate(ramp_model, backend, schedule):
    tr = ramp_trainer(ramp_model, backend)
    tr.step(**ramp_data(4))  # a step before fit: a run counts its own steps and epochs from 0
    hist = tr.fit(ramp_data(12), epochs=6, batch_size=4, shuffle=False, lr_schedule=schedule, progress=False)
    # the loss before step k is W_k, and W_{k+1} = W_k - lr_k: the rates the generated code applied
    used = -np.diff(hist["step_loss"] + [float(tr.params["W"][0, 0])])
    expect = [schedule.lr(0.5, k if schedule.per == "step" else k // 3) for k in range(18)]
    np.testing.assert_allclose(used, expect, rtol=1e-12)
    assert hist["lr"] == [expect[3 * e + 2] for e in range(6)]  # each epoch's last rate
    assert tr.hyper["lr"] == 0.5 and tr.optimizer.lr == 0.5  # fit gives the base rate back


def test_schedule_needs_a_rate_and_monitor_needs_its_metric(ramp_model):
    tr = ramp_trainer(ramp_model)
    with pytest.raises(DataError, match="lr_schedule must be a schedule"):
        tr.fit(ramp_data(4), lr_schedule=0.1, progress=False)
    with pytest.raises(DataError, match=r"monitors 'val_loss', which this run does not report \(it needs validation"):
        tr.fit(ramp_data(4), early_stopping=EarlyStopping(), progress=False)
    with pytest.raises(DataError, match="monitors 'val_accuracy'.*it reports loss, val_loss"):
        tr.fit(ramp_data(4), validation=ramp_data(4, val=True), early_stopping=EarlyStopping("val_accuracy"),
               progress=False)
    assert tr.t == 0


# -- early stopping ---------------------------------------------------------------------------

def test_early_stopping_rule():
    """Keras's rule on given curves: improvement by more than min_delta resets the wait."""
    def run(es, curve):
        es.start()
        for e, v in enumerate(curve, 1):
            if es.update(e, {es.monitor: v}, {}):
                return e
        return None

    es = EarlyStopping(patience=2)
    assert run(es, [3, 2, 1, 1, 1.5, 0.5]) == 5 and es.best == 1 and es.best_epoch == 3  # equal is no better
    assert run(EarlyStopping(patience=2, min_delta=0.1), [3, 2, 1.95, 1.91, 1.5]) == 4  # 0.05 steps don't count
    es = EarlyStopping("val_accuracy", patience=1)  # mode auto: max for accuracies
    assert es.mode == "max" and run(es, [0.5, 0.7, 0.6]) == 3 and es.best == 0.7
    assert run(EarlyStopping(patience=3), [1, 0.9, 0.8, 0.7]) is None
    assert run(EarlyStopping(patience=0), [1, 2]) == 2


def test_early_stopping_stops_and_restores_best(ramp_model):
    # W after epoch e is -e (lr 1, one step an epoch); val_loss (W + 3.4)^2 is least after epoch 3
    tr = ramp_trainer(ramp_model, lr=1.0)
    es = EarlyStopping(patience=2)
    hist = tr.fit(ramp_data(4), epochs=20, batch_size=4, validation=ramp_data(4, val=True, target=-3.4),
                  early_stopping=es, progress=False)
    assert hist["epoch"] == [1, 2, 3, 4, 5] and tr.t == 5
    np.testing.assert_allclose(hist["val_loss"], [(3.4 - e) ** 2 for e in range(1, 6)], rtol=1e-12)
    assert (es.best_epoch, es.stopped_epoch) == (3, 5)
    assert tr.params["W"][0, 0] == -3.0  # the best epoch's weights, not the last (-5)
    tr2 = ramp_trainer(ramp_model, lr=1.0)
    tr2.fit(ramp_data(4), epochs=20, batch_size=4, validation=ramp_data(4, val=True, target=-3.4),
            early_stopping=EarlyStopping(patience=2, restore_best=False), progress=False)
    assert tr2.params["W"][0, 0] == -5.0


def _ramp_run(d, ck=None, resume=False, interrupt=None):
    tr = ramp_trainer(d, lr=0.3)
    if interrupt is not None:
        _interrupt_after(tr, interrupt)
    es = EarlyStopping(patience=3, min_delta=1e-3)
    # two steps an epoch, shuffled; the rate warms up over 4 steps and then decays by a cosine over 30
    hist = tr.fit(ramp_data(8), epochs=40, batch_size=4, seed=3, validation=ramp_data(4, val=True, target=-4.1),
                  lr_schedule=Warmup(4, Cosine(30, per="step"), start_factor=0.2, per="step"), early_stopping=es,
                  checkpoint=ck, checkpoint_every=None if ck is None else 1, resume=ck if resume else None,
                  progress=False)
    return tr, es, hist


def test_resume_mid_schedule_and_mid_patience_equals_uninterrupted(ramp_model, tmp_path):
    full, es_full, hist_full = _ramp_run(ramp_model)
    best = es_full.best_epoch
    assert es_full.stopped_epoch == best + 3 < 40  # it stopped, so patience was counted
    ck = tmp_path / "ck.npz"
    # interrupted in the epoch after the first one without improvement: mid-patience, mid-epoch,
    # mid-warm-up-and-cosine; checkpoints every step, so the last one is inside that epoch
    with pytest.raises(KeyboardInterrupt):
        _ramp_run(ramp_model, ck, interrupt=2 * (best + 1) + 1)
    resumed, es, hist = _ramp_run(ramp_model, ck, resume=True)
    assert hist == hist_full  # bit for bit: the same floats in the same lists, rates included
    assert resumed.t == full.t and resumed.hyper == full.hyper
    np.testing.assert_array_equal(resumed.params["W"], full.params["W"])
    assert (es.best, es.best_epoch, es.stopped_epoch) == (es_full.best, es_full.best_epoch, es_full.stopped_epoch)
    # the final checkpoint of a run that stopped: resuming it trains no more and ends as it did
    again, _, hist = _ramp_run(ramp_model, ck, resume=True)
    assert hist == hist_full and again.t == full.t
    np.testing.assert_array_equal(again.params["W"], full.params["W"])


def test_resume_with_schedules_on_a_real_model(tmp_path):
    """A classifier with Adam, a per-epoch schedule and early stopping on validation accuracy,
    interrupted mid-epoch, equals the uninterrupted run bit for bit (float64, NumPy)."""
    d = classifier()

    def run(ck=None, resume=False, interrupt=None):
        # resumed with another rate: the checkpoint's base rate wins, as its hyperparameters do
        tr = sb.compile(d, optimizer=sb.optim.Adam(lr=0.5 if resume else 0.05), dtype="float64", seed=0)
        if interrupt is not None:
            _interrupt_after(tr, interrupt)
        hist = tr.fit(data(), epochs=5, batch_size=8, seed=5, validation=data(20, seed=2),
                      lr_schedule=Warmup(2, Exponential(0.7)), early_stopping=EarlyStopping("val_accuracy", 10),
                      checkpoint=ck, checkpoint_every=None if ck is None else 5, resume=ck if resume else None,
                      progress=False)
        return tr, hist

    full, hist_full = run()
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        run(ck, interrupt=24)  # epoch 4 of 5 (7 steps an epoch); the last checkpoint is after step 20
    resumed, hist = run(ck, resume=True)
    assert hist == hist_full and len(hist["lr"]) == 5
    for k in full.params:
        np.testing.assert_array_equal(resumed.params[k], full.params[k])
    for slot in full.state:
        for k in full.state[slot]:
            np.testing.assert_array_equal(resumed.state[slot][k], full.state[slot][k])


def test_resume_refuses_another_schedule(tmp_path):
    d, ck = regressor(), tmp_path / "ck.npz"
    rng = np.random.default_rng(0)
    xy = {"x": rng.normal(size=(20, 3)), "t": rng.normal(size=(20, 1))}
    tr = sb.compile(d, optimizer=sb.optim.SGD(lr=0.1), dtype="float64")
    tr.fit(xy, epochs=1, batch_size=5, lr_schedule=Cosine(10), checkpoint=ck, progress=False)
    with pytest.raises(DataError, match=r"lr_schedule=.Cosine\(T_max=10.*this run has lr_schedule=.Cosine\(T_max=20"):
        tr.fit(xy, epochs=2, batch_size=5, lr_schedule=Cosine(20), resume=ck, progress=False)
    with pytest.raises(DataError, match="early_stopping=None, this run has early_stopping=.EarlyStopping"):
        tr.fit(xy, epochs=2, batch_size=5, lr_schedule=Cosine(10), early_stopping=EarlyStopping("loss"),
               resume=ck, progress=False)


def test_damaged_best_weights_are_named(ramp_model, tmp_path):
    from codegen.runtime.weights import write_npz

    ck = tmp_path / "ck.npz"
    kw = dict(epochs=2, batch_size=4, validation=ramp_data(4, val=True, target=-3.4), progress=False)
    ramp_trainer(ramp_model).fit(ramp_data(4), checkpoint=ck, early_stopping=EarlyStopping(), **kw)
    with np.load(ck) as f:
        arrays = dict(f)
    write_npz(ck, {**arrays, "_best.W": np.zeros(2)})
    with pytest.raises(DataError, match=r"ck.npz: best weights '_best.W' has shape \(2,\)"):
        ramp_trainer(ramp_model).fit(ramp_data(4), resume=ck, early_stopping=EarlyStopping(), **kw)
