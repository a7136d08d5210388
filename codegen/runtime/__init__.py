"""The run-time side of a compiled model: the Trainer and the training loop.

Stage: after the backends; it imports only NumPy (tqdm and matplotlib when asked for) and
never ``symbp`` or the rest of ``codegen``, because ``sb.build`` copies every module here but
this one verbatim into standalone packages, where they import each other relatively.

To add a Trainer method: put it in ``trainer.py`` and use only what a generated module
offers (its ``INPUTS``/``PARAMS`` tables and functions); the loop's features go in
``training.py``.
"""

from codegen.runtime.inference import NoLoss
from codegen.runtime.plots import plot_history
from codegen.runtime.trainer import DataError, NonFiniteLoss, Trainer
from codegen.runtime.training import evaluate, fit

__all__ = ["DataError", "NoLoss", "NonFiniteLoss", "Trainer", "evaluate", "fit", "plot_history"]
