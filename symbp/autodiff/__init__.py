"""Automatic differentiation and its passes: derive, unroll (BPTT oracle), optimise, schedule.

Stage: after the model API. ``derive`` walks the forward graph in reverse and builds the
backward graph from each op's vector-Jacobian rule (``symbp.registry``); ``bptt.unroll``
copies a recurrence's cell T times (the oracle tests compare loops against); ``optimise``
does CSE and fusion of elementwise chains; ``schedule`` orders the graph and assigns buffers.

May import ``symbp.ir``, ``symbp.registry``, ``symbp.notation``, ``symbp.ops``,
``symbp.model`` and ``symbp.optim``; never ``symbp.layers`` or ``codegen``. The one
exception is lazy: ``Derivation.equations()`` / ``.graph()`` hand the derivation to
``symbp.show`` (inside the methods, so deriving never loads the printers).

To add a pass: a module with one pure function graph -> graph (or -> schedule), called
from ``codegen.spec`` (passes every backend runs) or ``derive``.
"""

from symbp.autodiff.derive import Derivation, derive, vjp

__all__ = ["Derivation", "derive", "vjp"]
