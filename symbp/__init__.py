"""symbp: a compiler for neural-network training.

Define a network as a symbolic graph, derive its backward graph by the chain rule (SymPy
for the scalar calculus), read the derived equations, and compile training code.

    import symbp as sb
    m = sb.Model("mlp")
    x = m.input("x", (64,)); y = m.input("y", (), dtype="int64")
    h = sb.tanh(x @ m.param("W1", (64, 32)) + m.param("b1", (32,), init="zeros"))
    m.minimize(sb.softmax_cross_entropy(h @ m.param("W2", (32, 10)), y))
    tr = sb.compile(sb.derive(m), optimizer=sb.optim.SGD(lr=0.1))
    tr.step(x=X, y=Y)

This module is the face that ties the compiler core (IR, derivation, scheduling) to the
backends in ``codegen``; the core itself never imports them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from symbp import layers, ops, optim  # noqa: E402
from symbp.autodiff.derive import Derivation, derive  # noqa: E402
from symbp.gradcheck import gradcheck  # noqa: E402
from symbp.ir import Node, SymbpError  # noqa: E402
from symbp.model import Model  # noqa: E402
from symbp.ops import *  # noqa: E402,F403 - every op function is sb.<name>


def compile(derivation: Derivation, backend: str = "numpy", optimizer=None, dtype: str | None = None,
            seed: int = 0, params: dict | None = None, distributed: str | None = None):
    """Generate, build and load training code for a derivation.

    Args:
        derivation: from ``sb.derive(model)``.
        backend: "numpy" (or another from ``codegen.BACKENDS``).
        optimizer: an ``sb.optim`` optimiser (default SGD with lr=0.01).
        dtype: "float32" or "float64"; None: the dtype the model's inputs declare, else float32.
        seed: seeds the parameter initialisers, and keys the random numbers of the step (dropout).
        params: initial values by name, overriding the initialisers.
        distributed: "mpi": every process ``mpiexec`` starts trains this one model on its own
            examples, the gradients summed over all (``pip install "symbp[mpi]"``; README,
            "More than one process"). None: this process alone.
    Returns:
        A Trainer: ``params``, ``loss``, ``gradients``, ``step``, ``predict``, ``source``. A model
        with outputs and no loss compiles for inference: its trainer has ``predict`` only.
    """
    import codegen
    from codegen.runtime import Trainer
    from symbp.init import initial_values

    if not isinstance(derivation, Derivation):
        raise SymbpError(f"sb.compile expects the result of sb.derive(model), got {type(derivation).__name__}")
    if backend not in codegen.BACKENDS:
        raise SymbpError(f"unknown backend {backend!r}; choose from {', '.join(codegen.BACKENDS)}")
    if distributed not in (None, "mpi"):
        raise SymbpError(f"distributed must be None or 'mpi', got {distributed!r}")
    dtype = _dtype(derivation, dtype, codegen.FLOAT_DTYPES)
    _check_seed(seed)
    optimizer = optim.check(optimizer if optimizer is not None else optim.SGD(lr=0.01))
    spec = codegen.Spec(derivation, optimizer, dtype)
    source, module = codegen.emit_and_load(spec, backend)
    values = initial_values(derivation.params, seed)
    for k, v in (params or {}).items():
        if k not in values:
            raise SymbpError(f"params: the model has no parameter {k!r}")
        values[k] = v
    tr = Trainer(module, values, optimizer.hyper, source, seed=seed, distributed=distributed)
    tr.optimizer = optimizer
    # predict(outputs=[...]) runs a module computing only those, built the first time it is asked for
    tr.predictor = lambda names: codegen.emit_and_load(spec.for_outputs(names), backend)[1]
    return tr


def build(derivation: Derivation, out: str, backend: str = "numpy", optimizer=None, dtype: str | None = None,
          seed: int = 0, name: str | None = None, params: dict | None = None):
    """Write a standalone training package (imports only NumPy at run time, never symbp).

    Args:
        derivation: from ``sb.derive(model)``.
        out: the folder to write (``pip install out`` installs it).
        backend: a backend with standalone packaging (``codegen.standalone.PACKAGERS``).
        optimizer: an ``sb.optim`` optimiser (default SGD with lr=0.01).
        dtype: "float32" or "float64"; None: the dtype the model's inputs declare, else float32.
        seed: seeds the initial weights, and keys the random numbers of the package's step
            (dropout): its trainer draws the numbers ``sb.compile(..., seed=seed)``'s does.
        name: the package's import name (default: the model's name).
        params: initial values by name, overriding the initialisers.
    Returns:
        The folder as a ``pathlib.Path``. In it: pyproject.toml, README.md and the package
        (``trainer()``, ``python -m NAME --selftest``, ``python -m NAME train data.npz``).
    """
    import codegen
    from codegen import standalone
    from symbp.init import initial_values

    if not isinstance(derivation, Derivation):
        raise SymbpError(f"sb.build expects the result of sb.derive(model), got {type(derivation).__name__}")
    dtype = _dtype(derivation, dtype, codegen.FLOAT_DTYPES)
    _check_seed(seed)
    optimizer = optim.check(optimizer if optimizer is not None else optim.SGD(lr=0.01))
    values = initial_values(derivation.params, seed)
    for k, v in (params or {}).items():
        if k not in values:
            raise SymbpError(f"params: the model has no parameter {k!r}")
        values[k] = v
    return standalone.write(codegen.Spec(derivation, optimizer, dtype), out, backend, values, name, seed)


def __getattr__(name: str):
    """``sb.schedules`` (learning-rate schedules for ``fit``) and ``sb.EarlyStopping``.

    They live in the runtime, which standalone packages carry too; importing them when first
    used keeps ``import symbp`` free of ``codegen``.
    """
    if name in ("schedules", "EarlyStopping"):
        from codegen.runtime import schedules

        return schedules if name == "schedules" else schedules.EarlyStopping
    raise AttributeError(f"module 'symbp' has no attribute {name!r}")


def _check_seed(seed) -> None:
    """Refuse a seed the step's generator cannot take (it also goes into a package's source)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise SymbpError(f"seed must be an int in [0, 2**64), got {seed!r}")


def _dtype(derivation: Derivation, dtype: str | None, choices: tuple) -> str:
    """The dtype to compile at: the one given, else the one the model declares, else float32."""
    if dtype is None:
        return derivation.dtype or "float32"
    if dtype not in choices:
        raise SymbpError(f"unknown dtype {dtype!r}; choose from {', '.join(choices)}")
    return dtype


__all__ = ["Derivation", "Model", "Node", "SymbpError", "build", "compile", "derive", "gradcheck", "layers",
           "optim", *ops.__all__]
