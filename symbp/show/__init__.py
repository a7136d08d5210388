"""Showing a derivation to people: equations (text, LaTeX), recurrences, graph pictures, plots.

Stage: after autodiff; nothing here takes part in derivation or code generation, although
the Cython cache key hashes these modules (the equations name buffers and annotate the
generated code). May import ``symbp.ir``, ``symbp.registry``, ``symbp.notation`` and
``symbp.ops``; never ``codegen``.

- ``reading``: how one node reads (its op's ``OpDef.show``, an elementwise formula in
  matrix form, the softmax family as one function);
- ``equations``: the numbered equations of a derivation; ``recurrences`` those of a loop;
- ``printers``: text and LaTeX printers for ``symbp.notation``'s display expressions;
- ``pictures``: the forward/backward graph through the ``graphviz`` package;
- ``plots``: matplotlib figures (gradient norms through time);
- ``cost``: what a training step costs before compiling (``Derivation.explain``): FLOPs,
  parameters, the step's buffers, the memory recurrences save for the backward pass.

To change how an op reads, edit its ``show=`` in its ``OpDef`` (``symbp.ops``), not here.
"""
