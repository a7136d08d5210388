"""Speech-like recognition with CTC on synthetic data: frames of noisy "phoneme" features,
no frame-level alignment, only each utterance's label sequence.

Each phoneme has a feature prototype; an utterance holds each of its phonemes for a random
number of frames, with silence (label-free frames) between some of them and always between
a repeated phoneme, plus noise, padded to T frames. A GRU reads the frames, a Dense layer
scores blank + phonemes per frame, and ``sb.ctc_loss`` trains it from the label sequences
alone. Decoding is greedy: the best class per frame, repeats merged, blanks dropped.

Run: python examples/ctc_speech.py [--steps 300] [--backend numpy|cython]
"""

from __future__ import annotations

import argparse
import os
import time

# One level of parallelism: small per-step products run fastest on one BLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import symbp as sb  # noqa: E402


def utterances(rng, n: int, phonemes: int, features: int, T: int, S: int, prototypes):
    """n padded utterances: (frames (n, T, F), labels (n, S), frame counts (n,), label counts (n,))."""
    x = np.zeros((n, T, features))
    labels = np.zeros((n, S), dtype=np.int64)
    xl, yl = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i in range(n):
        while True:
            seq = rng.integers(1, phonemes + 1, rng.integers(1, S + 1))
            frames = []
            for k, p in enumerate(seq):
                if k and (p == seq[k - 1] or rng.random() < 0.3):
                    frames += [0] * int(rng.integers(1, 3))        # silence
                frames += [int(p)] * int(rng.integers(1, 4))
            if len(frames) <= T:
                break
        x[i, :len(frames)] = prototypes[frames] + 0.3 * rng.normal(size=(len(frames), features))
        labels[i, :len(seq)], xl[i], yl[i] = seq, len(frames), len(seq)
    return x, labels, xl, yl


def build(T: int, S: int, features: int, phonemes: int, hidden: int) -> sb.Model:
    m = sb.Model("ctc_speech")
    x = m.input("x", (T, features))
    labels = m.input("labels", (S,), dtype="int64")
    xl, yl = m.input("xl", (), dtype="int64"), m.input("yl", (), dtype="int64")
    h = sb.layers.GRU(hidden, name="gru")(x)
    logits = sb.layers.Dense(phonemes + 1, name="out")(h)           # class 0: the blank
    m.output("logits", logits)
    m.minimize(sb.ctc_loss(logits, labels, xl, yl))
    return m


def greedy(logits: np.ndarray, length: int) -> list[int]:
    best = logits[:length].argmax(-1)
    return [int(c) for k, c in enumerate(best) if c != 0 and (k == 0 or c != best[k - 1])]


def edit_distance(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def main(steps: int = 300, T: int = 24, S: int = 5, phonemes: int = 6, features: int = 8, hidden: int = 32,
         batch: int = 32, backend: str = "numpy", seed: int = 0) -> float:
    """Train, then print a few decodings and return the held-out label error rate."""
    rng = np.random.default_rng(seed)
    prototypes = np.concatenate([np.zeros((1, features)), rng.normal(size=(phonemes, features))])
    train = utterances(rng, 50 * batch, phonemes, features, T, S, prototypes)
    test = utterances(rng, 200, phonemes, features, T, S, prototypes)
    tr = sb.compile(sb.derive(build(T, S, features, phonemes, hidden)), backend=backend,
                    optimizer=sb.optim.Adam(lr=1e-2), seed=seed)
    start = time.perf_counter()
    for step in range(steps):
        i = rng.integers(0, len(train[0]), batch)
        loss = tr.step(x=train[0][i], labels=train[1][i], xl=train[2][i], yl=train[3][i])
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  ctc loss {loss:.3f}")
    logits = tr.predict(x=test[0], labels=test[1], xl=test[2], yl=test[3])["logits"]
    errors = total = 0
    for k in range(len(test[0])):
        want, got = [int(c) for c in test[1][k, :test[3][k]]], greedy(logits[k], test[2][k])
        errors, total = errors + edit_distance(got, want), total + len(want)
        if k < 4:
            print(f"  labels {want}  decoded {got}")
    rate = errors / total
    print(f"held-out label error rate {rate:.1%} after {steps} steps, {time.perf_counter() - start:.1f} s")
    return rate


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cython"])
    main(**vars(ap.parse_args()))
