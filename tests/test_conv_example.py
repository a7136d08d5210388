"""The CNN digits example runs, learns, and its model's gradients check out."""

import importlib.util
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import symbp as sb

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cnn_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("cnn_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cnn_digits_learns_in_three_epochs():
    # 15 epochs reach 98-99 %; three already pass 93 % (chance is 10 %). One BLAS thread:
    # on a busy 2-core machine OpenBLAS's threads wait on each other and run 4x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        assert load_example().main(epochs=3) >= 0.93


def test_cnn_digits_model_gradients(rng):
    m = load_example().build(filters=4)
    batch = {"x": rng.uniform(0, 1, (3, 8, 8, 1)), "y": np.array([0, 5, 9])}
    r = sb.gradcheck(m, batch, tolerance=1e-5, max_entries=16)
    assert r.ok, str(r)
