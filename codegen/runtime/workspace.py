"""The buffers and carried state a trainer lends its generated functions. Imports nothing:
``sb.build`` copies it into standalone packages beside ``trainer.py``."""

from __future__ import annotations


class Workspace:
    """What a trainer lends the generated functions on every call (their last argument): its
    carried state, its gradient norms and its own buffers. A compiled module is shared by every
    trainer of a model, and the Cython kernels run with the GIL released, so buffers kept in
    the module would be written by two trainers at once; kept here, each trainer owns its own.

    Buffers are allocated per batch size; only the ``keep`` batch sizes used last are kept (a
    training loop uses one or two: the batch size and the last, short batch), so a run over
    many batch sizes does not hold memory for all of them.

    Args:
        state: the carries of stateful recurrences, by loop label (the trainer's ``carries``).
        grad_norms: where reverse loops store the norms of dL/dh_t, by loop label.
        keep: how many batch sizes' buffers to keep.
    """

    KEEP = 4

    def __init__(self, state: dict, grad_norms: dict, keep: int = KEEP):
        self.state, self.grad_norms, self.keep = state, grad_norms, keep
        self.running: dict = {}  # non-trainable state by name (the trainer's ``buffers``), read and replaced by name
        self.rng = (0, 1)  # (seed, step count) whose random numbers a call draws; set by the trainer
        self.fixed: dict = {}  # buffers that do not depend on the batch size (the update's scratch)
        self.batches: dict = {}  # batch size -> {key: buffers}, least recently used first

    def buffers(self, batch: int) -> dict:
        """The buffer table for ``batch`` (empty when new), freeing the least recently used
        batch size's table beyond ``keep``.

        Args:
            batch: the batch size of the call.
        Returns:
            A dict the generated code fills with its buffers for this batch size.
        """
        table = self.batches.pop(batch, None)
        if table is None:
            table = {}
            while len(self.batches) >= self.keep:
                del self.batches[next(iter(self.batches))]
        self.batches[batch] = table  # (re)inserted last: the most recently used
        return table
