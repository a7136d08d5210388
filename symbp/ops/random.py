"""Random ops: dropout masks drawn inside the compiled step from a counter-based generator.

The generator is Philox-4x64-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
3", SC'11; the Random123 library), a stateless function of a 128-bit key and a 256-bit
counter. The numbers of a step are a function of (seed, step count, stream): no state is
kept between calls, so ``loss`` and ``gradients`` can draw the next step's numbers without
advancing, and a run resumed from a checkpoint (which stores the seed and the step count)
draws what the uninterrupted run drew. Every backend computes the same bits:

    key     = (seed, 0)
    counter = (1 + block, stream, step, 0)       block = element // 8
    u32     = half (element % 2: low, then high) of word (element % 8) // 2 of the block
    kept    = u32 >= round(rate * 2**32)         (an integer test: no rounding differs)

``stream`` numbers the masks of a model in creation order (``symbp.autodiff.modes.training_form``),
so two masks never share numbers. NumPy ships this generator (``numpy.random.Philox`` is
Philox-4x64-10, whose counter it increments before each block: hence the 1 + block), which
gives the NumPy backend compiled speed; the Cython backend has it inline in C.
"""

from __future__ import annotations

import math
from numbers import Real

from symbp.ir import Node, SymbpError, fmt_shape
from symbp.ops import elementwise as E
from symbp.ops.structural import const
from symbp.registry import LazyModule, OpDef, register

N = LazyModule("symbp.notation")  # equation readings only: building a model never imports SymPy


def keep_threshold(rate: float) -> int:
    """The 32-bit threshold at or above which a random word keeps its element."""
    return min(round(rate * 2**32), 2**32 - 1)


def check_rate(rate, where: str) -> float:
    """``rate`` as a float if it is a dropout rate (a number in [0, 1)), else a SymbpError
    starting with ``where``."""
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 <= rate < 1 or math.isnan(rate):
        raise SymbpError(f"{where}: the dropout rate must be a number in [0, 1) (the fraction of units dropped), "
                         f"got {rate!r}")
    return float(rate)


def _mask_shape(inputs, rate, shape, stream=0):
    return tuple(shape), "float"


# In inference mode a mask is its expectation, 1 (where dropout reads it, dropout is dropped).
register(OpDef(
    "dropout_mask", "structural", shape=_mask_shape, vjp=lambda n, g: [],
    show=lambda a, n: N.symbol(n.label or "M", n.shape), inference=lambda n: const(1.0, n.shape),
    # random, without inputs or a derivative: its tests draw masks on both backends (the registry's
    # equation checks cannot know its values)
    sample={"attrs": {"rate": 0.5, "shape": (None, 4)}, "shapes": [], "tested_by": "tests/test_dropout.py"}))
# x ⊙ mask. Its own op (not a plain product) so inference mode can drop it: there it is x.
register(OpDef("dropout", "elementwise", formula=lambda x, mask: x * mask, vjp=E.vjp, sample={"arity": 2},
               inference=lambda n: n.inputs[0]))


def dropout_mask(shape: tuple, rate: float, label: str | None = None) -> Node:
    """A fresh mask: 0 with probability ``rate``, else 1 / (1 - rate); a None in ``shape``
    follows the batch size. Its numbers change every training step. It reads ``M_<label>`` in
    equations (inside a recurrence's cell too, where it is a captured input)."""
    rate = check_rate(rate, f"dropout {label!r}" if label else "dropout")
    return Node("dropout_mask", (), tuple(shape), "float", {"rate": rate, "shape": tuple(shape)},
                label=f"M_{label or 'drop'}")


def apply_mask(x: Node, mask: Node, label: str | None = None) -> Node:
    """``x`` times a dropout mask in training mode, ``x`` itself in inference mode."""
    return E.apply("dropout", x, mask, label=label)


def dropout(x: Node, rate: float, label: str | None = None) -> Node:
    """Inverted dropout: each element of ``x`` zeroed with probability ``rate`` and the rest
    scaled by 1 / (1 - rate), with new numbers every training step; the identity in inference
    mode (``predict``, ``evaluate``).

    Args:
        x: a float tensor.
        rate: the fraction dropped, in [0, 1); 0 returns ``x``.
        label: names the mask in equations and errors.
    Returns:
        A tensor of the shape of ``x``.
    """
    where = f"dropout {label!r}" if label else "dropout"
    if not isinstance(x, Node) or x.dtype != "float":
        got = f"{x.describe()} of dtype {x.dtype}" if isinstance(x, Node) else type(x).__name__
        raise SymbpError(f"{where}: expects a float tensor, got {got}")
    rate = check_rate(rate, where)
    if rate == 0:
        return x
    if _inside_step(x):
        raise SymbpError(f"{where}: {x.describe()} of shape {fmt_shape(x.shape)} is computed inside a scan's step; "
                         "dropout inside a loop is not supported: apply it to the sequence before or after the "
                         "loop, or use the recurrent layers' dropout= and recurrent_dropout=")
    return apply_mask(x, dropout_mask(x.shape, rate, label or x.label), label)


def _inside_step(x: Node) -> bool:
    """Whether ``x`` depends on a scan step's placeholders (its x_t or carry)."""
    stack, seen = [x], set()
    while stack:
        n = stack.pop()
        if n.id in seen or n.op == "param":
            continue
        seen.add(n.id)
        if n.op == "input" and "role" in n.attrs:
            return True
        stack.extend(n.inputs)
    return False
