"""Loss curves from ``fit``'s history (matplotlib, imported only when a plot is asked for).

Imports only NumPy: copied into standalone packages with the rest of the runtime.
"""

from __future__ import annotations

import numpy as np


def need_matplotlib() -> None:
    """Raise an ImportError that says what to install when matplotlib is missing (check before
    a long run, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting loss curves needs matplotlib: pip install matplotlib") from None


def plot_history(history: dict, path) -> None:
    """Save loss curves (and accuracy, where present) from ``fit``'s history to a PNG.

    Needs matplotlib (``pip install matplotlib``).
    """
    need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = "accuracy" in history or "val_accuracy" in history
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(10 if acc else 6, 4), squeeze=False)
    ax = axes[0][0]
    steps = np.arange(1, len(history.get("step_loss", [])) + 1)
    per_epoch = len(steps) / max(len(history["epoch"]), 1)
    if len(steps):
        ax.plot(steps / per_epoch, history["step_loss"], lw=0.6, alpha=0.4, label="loss (step)")
    ax.plot(history["epoch"], history["loss"], "o-", label="loss (epoch mean)")
    if "val_loss" in history:
        ax.plot(history["epoch"], history["val_loss"], "s-", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    if acc:
        ax = axes[0][1]
        for k in ("accuracy", "val_accuracy"):
            if k in history:
                ax.plot(history["epoch"], history[k], "o-", label=k.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
