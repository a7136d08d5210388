"""Optimisers as update rules: SymPy formulas that each backend prints into the step.

An optimiser says, per parameter element, how the parameter ``p`` and its state slots
(``m``, ``v``, ...) change given the gradient ``g``. Per-step scalars (bias corrections) are
formulas in the step count ``t`` and the hyperparameters, computed once per step, not per
element. Hyperparameters stay run-time values: changing ``tr.optimizer.lr`` needs no rebuild.

Gradient clipping is applied to ``g`` first: by value (``clip_value``), then by global norm
over all parameters (``clip_norm``).
"""

from __future__ import annotations

import functools
import math

from symbp.ir import SymbpError
from symbp.registry import LazyModule

sp = LazyModule("sympy")  # the rules are read when code is generated: making an optimiser needs no SymPy
S = LazyModule("symbp.ops.scalar")

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Optimizer"]


@functools.cache
def symbols() -> tuple:
    """The rule symbols (p, g, t, GNORM): parameter, gradient, step count, and the global
    gradient norm (computed by the backend). Made when a rule is first read: SymPy loads then."""
    return (*sp.symbols("p g t", real=True), sp.Symbol("gnorm", positive=True))


def __getattr__(name: str):
    """``from symbp.optim import g`` (and p, t, GNORM)."""
    if name in ("p", "g", "t", "GNORM"):
        return symbols()[("p", "g", "t", "GNORM").index(name)]
    raise AttributeError(f"module 'symbp.optim' has no attribute {name!r}")


DECAY_RATES = ("momentum", "rho", "beta1", "beta2")  # must stay below 1 (bias correction divides by 1 - b^t)


class Optimizer:
    """Base: subclasses set ``slots`` and implement ``rules``.

    Attributes:
        hyper: hyperparameter values by name (run-time scalars).
        clip_norm: clip the global gradient norm to this (None: off).
        clip_value: clip each gradient element to [-v, v] (None: off).
    """

    slots: tuple = ()

    def __init__(self, clip_norm: float | None = None, clip_value: float | None = None, **hyper):
        for name, v in hyper.items():
            self._check(name, v)
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and (not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise SymbpError(f"{type(self).__name__}: {name} must be a finite positive number, got {v!r}")
        self.hyper = {k: float(v) for k, v in hyper.items()}
        self.clip_norm = clip_norm
        self.clip_value = clip_value

    def _check(self, name: str, v) -> None:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < math.inf:
            raise SymbpError(f"{type(self).__name__}: {name} must be a finite non-negative number, got {v!r}")
        if name in DECAY_RATES and not v < 1:
            raise SymbpError(f"{type(self).__name__}: {name} must be below 1, got {v!r}")

    def __getattr__(self, name):
        hyper = self.__dict__.get("hyper", {})
        if name in hyper:
            return hyper[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if "hyper" in self.__dict__ and name in self.hyper:
            self._check(name, value)  # the step reads it: a bad value would fail inside generated code
            self.hyper[name] = float(value)
        else:
            super().__setattr__(name, value)

    def symbol(self, name: str) -> sp.Symbol:
        if name not in self.hyper:
            raise KeyError(name)
        return sp.Symbol(name, real=True)

    def scalars(self) -> list[tuple[sp.Symbol, sp.Expr]]:
        """Per-step scalars ``(symbol, formula in t and hyperparameters)``, in order."""
        return []

    def rules(self) -> list[tuple[str, sp.Expr]]:
        """Per-element assignments ``(target, formula)`` in order; target "p" or a slot."""
        raise NotImplementedError

    def value_clipped(self) -> sp.Expr:
        """The gradient after clipping by value only: what ``gnorm`` is the global norm of."""
        _, g, _, _ = symbols()
        if self.clip_value is None:
            return g
        c = sp.Float(self.clip_value)
        return S.select(g - c, c, S.select(-c - g, -c, g))

    def gradient(self) -> sp.Expr:
        """The gradient after clipping, as a formula in ``g`` (and ``gnorm``, the global norm
        of ``value_clipped()`` over all parameters)."""
        expr = self.value_clipped()
        if self.clip_norm is not None:
            c, gnorm = sp.Float(self.clip_norm), symbols()[3]
            expr = expr * S.select(gnorm - c, c / (gnorm + sp.Float(1e-6)), 1)
        return expr

    def key(self) -> tuple:
        """What the generated code depends on (not the hyperparameter values)."""
        return (type(self).__name__, tuple(sorted(self.hyper)), self.clip_norm, self.clip_value)

    def __repr__(self) -> str:
        args = [f"{k}={v!r}" for k, v in self.hyper.items()]
        args += [f"{k}={getattr(self, k)!r}" for k in ("clip_norm", "clip_value") if getattr(self, k) is not None]
        return f"{type(self).__name__}({', '.join(args)})"


class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p)."""

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, **clip):
        super().__init__(lr=lr, weight_decay=weight_decay, **clip)

    def rules(self):
        lr, wd = self.symbol("lr"), self.symbol("weight_decay")
        p, g, _, _ = symbols()
        return [("p", p - lr * (g + wd * p))]


class Momentum(Optimizer):
    """v = momentum*v + g; p -= lr*v (Nesterov: p -= lr*(g + momentum*v))."""

    slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False, **clip):
        self.nesterov = bool(nesterov)
        super().__init__(lr=lr, momentum=momentum, **clip)

    def rules(self):
        lr, mu, v = self.symbol("lr"), self.symbol("momentum"), sp.Symbol("v", real=True)
        p, g, _, _ = symbols()
        step = g + mu * v if self.nesterov else v
        return [("v", mu * v + g), ("p", p - lr * step)]

    def key(self):
        return super().key() + (self.nesterov,)


class RMSprop(Optimizer):
    """s = rho*s + (1-rho)*g^2; p -= lr * g / (sqrt(s) + eps)."""

    slots = ("s",)

    def __init__(self, lr: float = 0.001, rho: float = 0.9, eps: float = 1e-8, **clip):
        super().__init__(lr=lr, rho=rho, eps=eps, **clip)

    def rules(self):
        lr, rho, eps = (self.symbol(k) for k in ("lr", "rho", "eps"))
        s = sp.Symbol("s", real=True)
        p, g, _, _ = symbols()
        return [("s", rho * s + (1 - rho) * g**2), ("p", p - lr * g / (sp.sqrt(s) + eps))]


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` > 0 gives decoupled decay (AdamW)."""

    slots = ("m", "v")

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0, **clip):
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, **clip)

    def scalars(self):
        b1, b2 = self.symbol("beta1"), self.symbol("beta2")
        t = symbols()[2]
        return [(sp.Symbol("c1", real=True), 1 / (1 - b1**t)), (sp.Symbol("c2", real=True), 1 / (1 - b2**t))]

    def rules(self):
        lr, b1, b2, eps, wd = (self.symbol(k) for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
        m, v = sp.symbols("m v", real=True)
        p, g, _, _ = symbols()
        c1, c2 = (s for s, _ in self.scalars())
        return [("m", b1 * m + (1 - b1) * g),
                ("v", b2 * v + (1 - b2) * g**2),
                ("p", p - lr * (m * c1 / (sp.sqrt(v * c2) + eps) + wd * p))]


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01)."""

    def __init__(self, lr: float = 0.001, weight_decay: float = 0.01, **kw):
        super().__init__(lr=lr, weight_decay=weight_decay, **kw)


def check(optimizer) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise SymbpError(f"optimizer must be one of sb.optim.SGD/Momentum/RMSprop/Adam/AdamW, got {optimizer!r}")
    return optimizer
