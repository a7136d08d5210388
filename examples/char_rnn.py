"""A character-level LSTM trained on text shipped with every Python (the Zen of Python by
default; ``--corpus pydoc``: the documentation's topics, ``pydoc_data.topics``), then sampling
text from a prompt, a character at a time.

Training reads B parallel streams of the text, T characters at a time. The LSTM is stateful,
so each batch continues where the previous one stopped, and its gradients are truncated
(``truncate=(k, k)``: backpropagation through time reaches k steps back, as PyTorch's
``h.detach()`` every k steps), and with recurrent dropout, the usual regulariser of language
models (one mask per sequence on the carried state, Gal & Ghahramani). Sampling uses a second
model, one character wide, with the same parameter names and no loss (compiled for inference,
so no dropout): its predict state carries the LSTM's memory from one call to the next, so
feeding the prompt a character at a time and then each drawn character gives what the whole
text would, and the sample stays on topic.

Run: python examples/char_rnn.py [--corpus zen|pydoc] [--seconds 30] [--steps N] [--temperature 0.5]
                                [--recurrent-dropout 0.2] [--dropout 0.0]
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import os
import time

# One level of parallelism: small per-step matrix products run fastest on one BLAS thread
# (a busy multi-threaded BLAS pool made them 100x slower on a shared 2-core machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pydoc_data.topics  # noqa: E402

import numpy as np  # noqa: E402

import symbp as sb  # noqa: E402


def corpus(name: str = "zen") -> str:
    """The training text: "zen" (the Zen of Python, 856 characters) or "pydoc" (465k)."""
    if name == "pydoc":
        return "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    with contextlib.redirect_stdout(io.StringIO()):  # importing it prints it
        import this
    return codecs.decode(this.s, "rot13") + "\n\n"


def build(vocab: int, hidden: int, T: int, name: str, train: bool = True, k: int | None = None,
          dropout: float = 0.0, recurrent_dropout: float = 0.0) -> sb.Model:
    """The model over T characters: with ``train``, the next-character loss (truncated every k
    steps, with dropout on the LSTM's inputs and carried state at these rates); without, only
    the output ``probs`` (an inference model: predict only, where dropout does nothing)."""
    m = sb.Model(name)
    x = m.input("x", (T,), dtype="int64")
    e = sb.layers.Embedding(vocab, 32, name="emb")(x)
    h = sb.layers.LSTM(hidden, stateful=True, truncate=(k, k) if k and k < T else None, dropout=dropout,
                       recurrent_dropout=recurrent_dropout, name="lstm")(e)
    logits = sb.layers.Dense(vocab, name="out")(h)
    m.output("probs", sb.softmax(logits))
    if train:
        m.minimize(sb.softmax_cross_entropy(logits, m.input("y", (T,), dtype="int64")))
    return m


def sample(gen, chars: str, prompt: str, n: int, rng, temperature: float = 0.6) -> str:
    """Feed ``prompt`` a character at a time, then draw ``n`` more, each fed back in.

    Args:
        gen: the trainer of the one-character inference model (its predict state is the memory).
        chars: the vocabulary (index -> character).
        prompt: the text to start from (characters of the vocabulary).
        n: how many characters to draw.
        rng: a numpy Generator.
        temperature: below 1 sharpens the distribution (safer text), above 1 flattens it.
    Returns:
        The prompt and the drawn characters.
    """
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(prompt) - set(index))
    if not prompt or unknown:
        raise SystemExit(f"prompt {prompt!r}: " + (f"characters {unknown} are not in the training text" if unknown
                                                   else "give at least one character"))
    gen.reset_state()
    out = list(prompt)
    for c in prompt:
        p = gen.predict(x=np.array([[index[c]]]), outputs=["probs"])["probs"][0, 0]
    for _ in range(n):
        logp = np.log(np.maximum(p, 1e-12)) / temperature
        q = np.exp(logp - logp.max())
        c = chars[rng.choice(len(chars), p=q / q.sum())]
        out.append(c)
        p = gen.predict(x=np.array([[index[c]]]), outputs=["probs"])["probs"][0, 0]
    return "".join(out)


def main(seconds: float = 30.0, steps: int | None = None, hidden: int = 128, T: int = 64, k: int = 32,
         batch: int = 16, every: int = 0, prompt: str = "Beautiful is", length: int = 300,
         temperature: float = 0.5, backend: str = "cython", seed: int = 0, text: str = "zen",
         recurrent_dropout: float = 0.2, dropout: float = 0.0) -> tuple[float, str]:
    """Train for ``seconds`` (or ``steps``), print samples every ``every`` steps (0: at the end only).

    The loss printed is training's, with dropout on: above what the same weights score without.

    Returns:
        (the final smoothed loss in nats per character, the last sample).
    """
    text = corpus(text)
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text], dtype=np.int64)
    print(f"{len(text)} characters, vocabulary {len(chars)}")
    # a short text is read round and round: streams long enough for every batch to start apart
    data = np.tile(data, -(-(batch * T * 4) // len(data)))
    t0 = time.perf_counter()
    tr = sb.compile(sb.derive(build(len(chars), hidden, T, "char_rnn", k=k, dropout=dropout,
                                    recurrent_dropout=recurrent_dropout)), backend=backend,
                    optimizer=sb.optim.Adam(lr=3e-3, clip_norm=5.0), seed=seed)
    gen = sb.compile(sb.derive(build(len(chars), hidden, 1, "char_rnn_sampler", train=False)), backend=backend)
    print(f"derived and compiled in {time.perf_counter() - t0:.2f} s ({backend})")
    rng = np.random.default_rng(seed)
    span = (len(data) - 1) // batch
    starts = np.arange(batch) * span
    t0, done, pos, avg, text_out = time.perf_counter(), 0, 0, None, ""

    def show():
        for name in gen.params:
            gen.params[name] = tr.params[name]
        print(f"step {done:5d}  {time.perf_counter() - t0:6.1f} s  loss {avg:.3f} nats/char")
        out = sample(gen, chars, prompt, length, rng, temperature)
        print("    " + out.replace("\n", "\n    "))
        return out

    while (steps is None or done < steps) and time.perf_counter() - t0 < seconds:
        if pos + T > span:
            pos = 0
            tr.reset_state()
        idx = starts[:, None] + pos + np.arange(T)[None, :]
        loss = tr.step(x=data[idx], y=data[idx + 1])
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        pos, done = pos + T, done + 1
        if every and done % every == 0:
            text_out = show()
    if not every or done % every:
        text_out = show()
    print(f"{done} steps in {time.perf_counter() - t0:.1f} s; final smoothed loss {avg:.3f} nats/char")
    return avg, text_out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--corpus", default="zen", choices=("zen", "pydoc"))
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--every", type=int, default=0, help="print a sample every N steps (0: at the end)")
    ap.add_argument("--prompt", default="Beautiful is")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--backend", default="cython", choices=("numpy", "cython"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recurrent-dropout", type=float, default=0.2, help="dropout rate of the LSTM's carried state")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout rate of the LSTM's inputs")
    args = ap.parse_args()
    main(args.seconds, args.steps, args.hidden, every=args.every, prompt=args.prompt,
         temperature=args.temperature, backend=args.backend, seed=args.seed, text=args.corpus,
         recurrent_dropout=args.recurrent_dropout, dropout=args.dropout)
