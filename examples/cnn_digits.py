"""Train a small CNN on scikit-learn's bundled 8x8 digits (no download) with symbp.

Images are channels last: (batch, 8, 8, 1). Two 'same' convolutions with a residual block,
2x2 max pooling, then a dense classifier. With --regularise, each convolution is followed by
BatchNorm (before its ReLU) and the dense layer by Dropout; predict then runs in inference mode
(running statistics, no dropout).

Run: python examples/cnn_digits.py [--epochs N] [--backend numpy] [--regularise]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import symbp as sb

L = sb.layers


def build(filters: int = 16, regularise: bool = False) -> sb.Model:
    m = sb.Model("cnn_digits")
    x = m.input("x", (8, 8, 1))
    y = m.input("y", (), dtype="int64")

    def conv(name: str, relu: bool = True) -> list:
        """A 'same' 3x3 convolution, then (regularised) BatchNorm, then ReLU where asked."""
        if not regularise:
            return [L.Conv2D(filters, 3, padding="same", activation="relu" if relu else None, init="he_uniform",
                             name=name)]
        # no bias before BatchNorm: the batch mean would subtract it again (its gradient is zero)
        return [L.Conv2D(filters, 3, padding="same", use_bias=False, init="he_uniform", name=name),
                L.BatchNorm(name=f"{name}_bn"), *([sb.relu] if relu else [])]

    net = L.Sequential([
        *conv("conv1"),
        L.Residual([*conv("res_a"), *conv("res_b", relu=False)], name="res"),
        L.MaxPool2D(2, name="pool"),                       # (4, 4, filters)
        L.Flatten(name="flat"),
        L.Dense(64, activation="relu", init="he_uniform", name="fc"),
        *([L.Dropout(0.3, name="drop")] if regularise else []),  # training only: predict keeps every unit
        L.Dense(10, name="out"),
    ])
    logits = net(m, x)
    m.output("probs", sb.softmax(logits))
    m.minimize(sb.softmax_cross_entropy(logits, y))
    return m


def main(epochs: int = 15, backend: str = "numpy", batch_size: int = 32, seed: int = 0,
         regularise: bool = False) -> float:
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[..., None]   # (n, 8, 8, 1)
    Xtr, Xte, ytr, yte = train_test_split(X, digits.target, test_size=0.25, random_state=seed,
                                          stratify=digits.target)
    t0 = time.perf_counter()
    d = sb.derive(build(regularise=regularise))
    tr = sb.compile(d, backend=backend, optimizer=sb.optim.Adam(lr=2e-3), seed=seed)
    print(f"derived and compiled in {time.perf_counter() - t0:.2f} s ({backend} backend)")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(Xtr))
        losses = [tr.step(x=Xtr[idx], y=ytr[idx])
                  for idx in (order[i:i + batch_size] for i in range(0, len(order), batch_size))]
        if epoch % 5 == 0 or epoch == epochs:
            acc = float((tr.predict(x=Xte)["probs"].argmax(1) == yte).mean())
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  test accuracy {acc:.3f}")
    print(f"trained {epochs} epochs in {time.perf_counter() - t0:.2f} s")
    return acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--regularise", action="store_true", help="BatchNorm after each convolution, Dropout")
    args = ap.parse_args()
    main(args.epochs, args.backend, regularise=args.regularise)
