"""A model file for the `symbp` command: a small MLP classifier for 8x8 digit images.

    symbp equations examples/mlp_model.py
    symbp graph examples/mlp_model.py --format svg --backward -o mlp.svg
    symbp build examples/mlp_model.py -o mlp_pkg

Run it as a script to write training data (scikit-learn's bundled digits, no download):
    python examples/mlp_model.py digits.npz     # then: python -m mlp train digits.npz --epochs 20
"""

import symbp as sb

model = sb.Model("mlp")
x = model.input("x", (64,))                   # one 8x8 image, flattened: the tensor is (batch, 64)
y = model.input("y", (), dtype="int64")       # its class, 0..9
h = sb.tanh(x @ model.param("W1", (64, 32)) + model.param("b1", (32,), init="zeros"))
logits = h @ model.param("W2", (32, 10)) + model.param("b2", (10,), init="zeros")
model.output("probs", sb.softmax(logits))
model.minimize(sb.softmax_cross_entropy(logits, y))


if __name__ == "__main__":
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = sys.argv[1] if len(sys.argv) > 1 else "digits.npz"
    np.savez(out, x=(digits.data / 16.0).astype(np.float32), y=digits.target)
    print(f"wrote {out}: x {digits.data.shape}, y {digits.target.shape}")
