"""The CNN digits example runs, learns, and its model's gradients check out."""


import numpy as np
from threadpoolctl import threadpool_limits

import symbp as sb
from tests.helpers import example


def test_cnn_digits_learns_in_three_epochs():
    # 15 epochs reach 98-99 %; three already pass 93 % (chance is 10 %). One BLAS thread:
    # on a busy 2-core machine OpenBLAS's threads wait on each other and run 4x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        assert example("cnn_digits").main(epochs=3) >= 0.93


def test_cnn_digits_model_gradients(rng):
    m = example("cnn_digits").build(filters=4)
    batch = {"x": rng.uniform(0, 1, (3, 8, 8, 1)), "y": np.array([0, 5, 9])}
    r = sb.gradcheck(m, batch, tolerance=1e-5, max_entries=16)
    assert r.ok, str(r)
