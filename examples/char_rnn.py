"""A character-level LSTM trained on the Python documentation text (``pydoc_data.topics``,
shipped with every Python), printing sampled text as it learns.

Training reads B parallel streams of the text, T characters at a time; the LSTM is stateful,
so each batch continues where the previous one stopped (truncated BPTT with k1 = k2 = T).
A second, one-step model with the same parameter names samples from the trained weights.

Run: python examples/char_rnn.py [--seconds 60] [--steps N] [--hidden 128]
"""

from __future__ import annotations

import argparse
import os
import time

# One level of parallelism: small per-step matrix products run fastest on one BLAS thread
# (a busy multi-threaded BLAS pool made them 100x slower on a shared 2-core machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pydoc_data.topics  # noqa: E402

import numpy as np  # noqa: E402

import symbp as sb  # noqa: E402


def corpus() -> str:
    return "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def build(vocab: int, hidden: int, T: int, name: str) -> sb.Model:
    m = sb.Model(name)
    x = m.input("x", (T,), dtype="int64")
    y = m.input("y", (T,), dtype="int64")
    h = sb.layers.LSTM(hidden, stateful=True, name="lstm")(m, sb.onehot(x, vocab))
    logits = sb.layers.Dense(vocab, name="out")(m, h)
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def sample(gen, chars: str, prime: str, n: int, rng, temperature: float = 0.8) -> str:
    """Feed ``prime`` one character at a time, then draw ``n`` more."""
    index = {c: i for i, c in enumerate(chars)}
    gen.reset_state()
    out = list(prime)
    p = None
    for c in prime:
        p = gen.predict(x=np.array([[index[c]]]))["probs"][0, 0]
    for _ in range(n):
        logp = np.log(np.maximum(p, 1e-12)) / temperature
        q = np.exp(logp - logp.max())
        c = chars[rng.choice(len(chars), p=q / q.sum())]
        out.append(c)
        p = gen.predict(x=np.array([[index[c]]]))["probs"][0, 0]
    return "".join(out)


def main(seconds: float = 60.0, steps: int | None = None, hidden: int = 128, T: int = 32, batch: int = 32,
         every: int = 200, seed: int = 0) -> float:
    text = corpus()
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text], dtype=np.int64)
    print(f"{len(text)} characters, vocabulary {len(chars)}")
    t0 = time.perf_counter()
    tr = sb.compile(sb.derive(build(len(chars), hidden, T, "char_rnn")),
                    optimizer=sb.optim.Adam(lr=3e-3, clip_norm=5.0), seed=seed)
    gen = sb.compile(sb.derive(build(len(chars), hidden, 1, "char_rnn_sampler")), seed=seed)
    print(f"derived and compiled in {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(seed)
    span = (len(data) - 1) // batch
    starts = np.arange(batch) * span
    t0, k, pos, avg = time.perf_counter(), 0, 0, None
    while (steps is None or k < steps) and time.perf_counter() - t0 < seconds:
        if pos + T > span:
            pos = 0
            tr.reset_state()
        idx = starts[:, None] + pos + np.arange(T)[None, :]
        loss = tr.step(x=data[idx], y=data[idx + 1])
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        pos, k = pos + T, k + 1
        if k % every == 0:
            for name in gen.params:
                gen.params[name] = tr.params[name]
            print(f"step {k:5d}  {time.perf_counter() - t0:6.1f} s  loss {avg:.3f} nats/char")
            print("   ", sample(gen, chars, "The ", 120, rng).replace("\n", "\n    "))
    print(f"{k} steps in {time.perf_counter() - t0:.1f} s; final smoothed loss {avg:.3f} nats/char")
    return avg


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--every", type=int, default=200)
    args = ap.parse_args()
    main(args.seconds, args.steps, args.hidden, every=args.every)
