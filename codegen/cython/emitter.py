"""Cython backend: emits one ``.pyx`` per model with the whole training step in C.

The forward pass, loss, backward pass and optimiser update are straight-line C over raw
pointers, run without the GIL: matrix products through ``scipy.linalg.cython_blas`` gemm,
elementwise chains as fused loops printed from their SymPy formulas, reductions and copies
as loop nests over strided views (:mod:`codegen.cython.kernels`). The C sits in a verbatim
``cdef extern from *`` block, so Cython only compiles the small Python surface around it
(the same constants and functions as the NumPy module, so the Trainer drives both alike);
that surface is what costs compile time, so it stays small.
"""

from __future__ import annotations

import sympy as sp

from codegen.cython import conv, loops, sequence
from codegen.cython import kernels as K
from codegen.cython.printer import CTYPES, PHILOX, KernelPrinter, helpers, kernel_body
from codegen.naming import Namer, equation_comment, model_namer
from codegen.spec import Spec, range_check
from symbp.autodiff.schedule import schedule
from symbp.ir import Node, SymbpError
from symbp.ops import scalar as S

EMIT = {**K.EMIT, **conv.EMIT, **loops.EMIT, **sequence.EMIT}
"""How each structural op that computes into a buffer is emitted (views: VIEWS)."""
VIEWS = {**K.VIEWS, **loops.VIEWS}
"""Ops that only re-describe an input's storage."""
class Function:
    """One generated C function: the arrays it reads and writes, and its body.

    Arrays are numbered: the leaves it reads (parameters, inputs), then the schedule's
    buffers, then private buffers (copies some ops need). Python passes them in that order.
    """

    def __init__(self, name: str, roots: list[Node], namer: Namer, printer: KernelPrinter, equations=None):
        self.name, self.roots = name, roots
        self.equations = equations
        self.namer, self.printer = namer, printer
        self.itemsize = 4 if printer.dtype == "float32" else 8
        self.view_ops = VIEWS
        self.loops: list[loops.Loop] = []  # recurrences, for the Python wrapper (state, norms)
        self.io_slots = 1  # io[0] is the loss; recurrences add their state flags
        self.helper_fns: list[str] = []  # C functions this one calls (loop bodies), defined before it
        self.sched = schedule(roots, frozenset(VIEWS))
        self.arrays: list[tuple] = []  # (source, key, shape, dtype); source "P", "D" or "buffer"
        self.views: dict[int, K.View] = {}
        self.body: list[str] = []
        self.ntags = 0
        for n in self.sched.leaves:
            # buffers (running statistics) are the trainer's, read by name from the workspace
            src, prefix = {"param": ("P", "P"), "buffer": ("_ws.running", "R")}.get(n.op, ("D", "D"))
            self.views[n.id] = self._array(src, n.name, n.shape, n.dtype, f"{prefix}_{namer(n)}")
        self.buffer_views = [self._array("buffer", k, shape, dtype, f"b{k}")
                             for k, (shape, dtype) in enumerate(self.sched.buffers)]
        self.results: list[int] = []  # array index of each root
        self.check: int | None = None  # array index of the label checks' record (which check, label)
        self.checks: list[tuple] = []  # per range check: _bad_label's arguments after the value
        self.rng: int | None = None  # the first of the io slots holding (seed, step), if it draws numbers
        self._compile()

    # -- the ctx interface used by codegen.cython.kernels ---------------------------------
    def _array(self, src, key, shape, dtype, cname) -> K.View:
        self.arrays.append((src, key, tuple(shape), dtype, cname))
        return K.dense(cname, shape, "int64_t" if dtype == "int64" else "sb_real")

    def scratch(self, shape: tuple, dtype: str) -> K.View:
        k = len(self.arrays)
        return self._array("buffer", k, shape, dtype, f"s{k}")

    def tag(self) -> str:
        self.ntags += 1
        return f"k{self.ntags}"

    def rng_slot(self) -> int:
        """The first of four io slots where the wrapper puts the seed and the step count (32-bit
        halves), reserved on first use; the generator's C is then defined before this function."""
        if self.rng is None:
            self.rng, self.io_slots = self.io_slots, self.io_slots + 4
            self.helper_fns.append(PHILOX)
        return self.rng

    def label_check(self, n: Node) -> tuple[str, int]:
        """The C name of the int64 pair where one-hot or embedding ``n`` records its first
        out-of-range label or id, and the number (from 1) it records with it; the function zeroes
        the pair on entry."""
        if self.check is None:
            self.check = len(self.arrays)
            self.scratch((2,), "int64")
        self.checks.append(range_check(n))
        return self.arrays[self.check][4], len(self.checks)

    # -- body -----------------------------------------------------------------------------
    def _compile(self) -> None:
        self.compile_nodes()
        self._results()

    def compile_nodes(self) -> None:
        """Append the C of every scheduled node to ``body`` (cell bodies share this)."""
        shown: set = set()
        equations = getattr(self, "equations", None)  # a cell body has none
        for n in self.sched.order:
            ins = [self.views[i.id] for i in n.inputs]
            if equations is not None:
                self.body += [f"/* {c.replace('*/', '* /')} */" for c in equation_comment(equations, n, shown)]
            if n.op in self.view_ops:
                if n.op == "reshape" and not ins[0].is_contiguous():
                    tmp = self.scratch(n.inputs[0].shape, n.dtype)
                    self.body += K.copy(tmp, ins[0], self.tag())
                    ins[0] = tmp
                self.views[n.id] = self.view_ops[n.op](n, *ins)
                continue
            out = self.buffer_views[self.sched.buffer_of[n.id]]
            self.views[n.id] = out
            self.body.append(f"/* {self.namer(n)} = {n.op} */")
            if "expr" in n.attrs:
                self.body += self._elementwise(n, out, ins)
            elif n.op in EMIT:
                self.body += EMIT[n.op](self, n, out, *ins)
            else:
                raise SymbpError(f"the cython backend cannot emit op {n.op!r} ({n.describe()}) yet; "
                                 "use backend=\"numpy\" for this model")

    def _results(self) -> None:
        for r in self.roots:
            v = self.views[r.id]
            owned = r.id in self.sched.buffer_of
            if owned:
                self.results.append(self.sched.buffer_of[r.id] + len(self.sched.leaves))
            else:  # a view or a leaf: hand back a dense copy the caller may keep
                k = len(self.arrays)
                self.body += K.copy(self.scratch(r.shape, r.dtype), v, self.tag())
                self.results.append(k)

    def _elementwise(self, n: Node, out: K.View, ins: list[K.View]) -> list[str]:
        expr = n.attrs["expr"]
        xs = S.symbols(len(ins))
        used = [k for k, x in enumerate(xs) if expr.has(x)]
        views = [out] + [K.broadcast_view(ins[k], n.shape) for k in used]

        def body(refs):
            loads = [f"const sb_real x{k} = {ref};" for k, ref in zip(used, refs[1:])]
            return loads + kernel_body(expr, self.printer, refs[0])
        return K.loop_nest(n.shape, views, body, self.tag())

    def c_source(self) -> list[str]:
        lines = [*self.helper_fns, f"static int sb_{self.name}(void **a, double *io, long B) {{"]
        for k, (_, _, _, dtype, cname) in enumerate(self.arrays):
            ctype = "int64_t" if dtype == "int64" else "sb_real"
            lines.append(f"    {ctype} *{cname} = ({ctype} *)a[{k}];")
        if self.check is not None:
            lines.append(f"    {self.arrays[self.check][4]}[0] = 0;")
        lines += ["    " + line for line in self.body]
        if self.name in ("gradients", "loss", "evaluate"):
            loss = self.views[self.roots[0].id]
            lines.append(f"    io[0] = (double){loss.base()}[0];")
        lines += ["    (void)B; (void)io;", "    return 0;", "}", ""]
        return lines


def _update(spec: Spec, pnames: list[str], printer: KernelPrinter) -> list[str]:
    """C for the optimiser update: arrays are params, grads, then each slot's arrays."""
    from symbp.optim import GNORM, g, p, t

    opt = spec.optimizer
    hyper = sorted(opt.hyper)
    dprinter = KernelPrinter("float64")
    rename = {sp.Symbol(k, real=True): sp.Symbol(f"h_{k}", real=True) for k in hyper}
    rename[t] = sp.Symbol("t_", real=True)
    lines = ["static int sb_update(void **a, double *io, long B) {"]
    lines += [f"    const double h_{k} = io[{i}];" for i, k in enumerate(hyper)]
    lines.append(f"    const double t_ = io[{len(hyper)}];")
    gexpr = opt.gradient()
    npar = len(pnames)
    if gexpr.has(GNORM):
        # the global norm of the value-clipped gradients (symbp.optim: clip by value first)
        clipped = opt.value_clipped().xreplace({g: sp.Symbol("graw_", real=True)})
        body = " ".join(kernel_body(clipped, printer, "const sb_real vc_", prefix="n"))
        lines.append("    double gn_ = 0;")
        for k, name in enumerate(pnames):
            count = K.cexpr(K.size(spec.derivation.params[name].shape))
            lines.append(f"    {{ const sb_real *g_ = (const sb_real *)a[{npar + k}]; "
                         f"for (long i = 0; i < {count}; i++) {{ const sb_real graw_ = g_[i]; {body} "
                         "gn_ += (double)vc_ * vc_; } }")
        lines.append("    const sb_real gnorm = (sb_real)sqrt(gn_);")
        rename[GNORM] = sp.Symbol("gnorm", real=True)
    for sym, formula in opt.scalars():
        lines.append(f"    const double sd_{sym} = {dprinter.doprint(formula.xreplace(rename))};")
        rename[sym] = sp.Symbol(f"sc_{sym}", real=True)
    lines += [f"    const sb_real h{k}_ = (sb_real)h_{k};" for k in hyper]
    lines += [f"    const sb_real sc_{sym} = (sb_real)sd_{sym};" for sym, _ in opt.scalars()]
    # in the element loop, hyperparameters are read at the kernel's precision
    rename.update({sp.Symbol(k, real=True): sp.Symbol(f"h{k}_", real=True) for k in hyper})
    slots = {s: sp.Symbol(f"v_{s}", real=True) for s in opt.slots}
    rename.update({sp.Symbol(s, real=True): v for s, v in slots.items()})
    rename[p], rename[g] = sp.Symbol("p_", real=True), sp.Symbol("g_", real=True)
    gprint = gexpr.xreplace({g: sp.Symbol("graw_", real=True)}).xreplace(rename)
    for k, name in enumerate(pnames):
        count = K.cexpr(K.size(spec.derivation.params[name].shape))
        lines.append(f"    {{ /* {name} */")
        lines.append(f"        sb_real *restrict P_ = (sb_real *)a[{k}];")
        lines.append(f"        const sb_real *restrict G_ = (const sb_real *)a[{npar + k}];")
        for j, s in enumerate(opt.slots):
            lines.append(f"        sb_real *restrict S{s}_ = (sb_real *)a[{npar * (2 + j) + k}];")
        lines.append(f"        for (long i = 0; i < {count}; i++) {{")
        body = ["const sb_real graw_ = G_[i];", "sb_real p_ = P_[i];"]
        body += [f"sb_real v_{s} = S{s}_[i];" for s in opt.slots]
        body += kernel_body(gprint, printer, "const sb_real g_", prefix="g")
        for j, (target, rule) in enumerate(opt.rules()):
            lhs = "p_" if target == "p" else f"v_{target}"
            body += ["{"] + ["    " + x for x in kernel_body(rule.xreplace(rename), printer, lhs, f"r{j}")] + ["}"]
        body += ["P_[i] = p_;"] + [f"S{s}_[i] = v_{s};" for s in opt.slots]
        lines += ["            " + b for b in body]
        lines += ["        }", "    }"]
    lines += ["    (void)B; (void)a;", "    return 0;", "}", ""]
    return lines


def emit(spec: Spec) -> str:
    """The ``.pyx`` source for ``spec`` (see ``codegen.spec``)."""
    d = spec.derivation
    pnames = list(d.params)
    loss, grads, outs, updates = spec.roots()
    namer, eqs = model_namer(d)
    printer = KernelPrinter(spec.dtype)
    fns = [Function("gradients", [loss, *grads, *updates], namer, printer, eqs),
           Function("loss", [loss], namer, printer, eqs)] if spec.trains else []  # else inference only
    if outs:
        fns.append(Function("predict", outs, namer, printer, eqs))
    evaluate = spec.evaluate_root()  # None: the training loss serves evaluate (the runtime's fallback)
    if evaluate is not None:
        fns.append(Function("evaluate", [evaluate], namer, printer))  # the equations show training mode
    update = _update(spec, pnames, printer)
    from codegen.cython import module

    return module.render(spec, fns, update, pnames, helpers(spec.dtype), CTYPES[spec.dtype])
