"""Check derived gradients against central finite differences in float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GradcheckResult:
    """Worst relative error per parameter, and whether all are within tolerance."""

    errors: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        rows = [f"  {k:<20} {e:.2e} {'ok' if e <= self.tolerance else 'FAIL'}" for k, e in self.errors.items()]
        return "gradient check (worst relative error per parameter):\n" + "\n".join(rows)


def gradcheck(model_or_derivation, batch: dict, eps: float = 1e-5, tolerance: float = 1e-5,
              max_entries: int = 64, seed: int = 0, backend: str = "numpy") -> GradcheckResult:
    """Compare derived gradients with central differences (float64).

    Args:
        model_or_derivation: a Model (derived here) or a Derivation.
        batch: input arrays by name.
        eps: finite-difference step.
        tolerance: the largest acceptable relative error.
        max_entries: entries checked per parameter (chosen at random; all if fewer).
        seed: parameter initialisation and entry choice.
    Returns:
        A GradcheckResult; ``print`` it for a table, ``.ok`` for the verdict.
    """
    import symbp

    d = model_or_derivation
    if not isinstance(d, symbp.Derivation):
        d = symbp.derive(d)
    if d.loss is None:
        raise symbp.SymbpError(f"model {d.name!r} has no loss (it derives for inference): no gradients to check")
    truncated = d.truncated_loops()
    if truncated:
        raise symbp.SymbpError(
            ", ".join(f"loop {k!r} uses truncated BPTT {v}" for k, v in truncated.items())
            + "; its gradients are by design not those of the loss, so finite differences cannot check "
            "them. Check the same model with truncate=None (the rolled loop is the same code).")
    tr = symbp.compile(d, backend=backend, dtype="float64", seed=seed)
    errors = tr.finite_difference_errors(batch, eps, max_entries, np.random.default_rng(seed))
    return GradcheckResult(errors, tolerance)
