"""Plots of training diagnostics. matplotlib is an optional dependency (``pip install matplotlib``)."""

from __future__ import annotations

from symbp.ir import SymbpError


def plot_gradient_norms(norms: dict, path: str, title: str = "gradient norm through time") -> str:
    """Save a PNG of ||dL/dh_t|| against t, one line per recurrence (log scale).

    Args:
        norms: from ``tr.gradient_norms_through_time(**batch)`` ({label: (T,) array}), or a
            dict of such dicts keyed by a series name (e.g. one per model to compare).
        path: where to write the PNG.
        title: the plot's title.
    Returns:
        ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SymbpError("plot_gradient_norms needs matplotlib: pip install matplotlib") from None
    series = {}
    for k, v in norms.items():
        if isinstance(v, dict):
            series.update({f"{k}: {label}" if len(v) > 1 else k: arr for label, arr in v.items()})
        else:
            series[k] = v
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, v in series.items():
        ax.semilogy(range(len(v)), [max(float(x), 1e-30) for x in v], label=label)
    ax.set_xlabel("time step t")
    ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
