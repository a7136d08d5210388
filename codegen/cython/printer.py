"""Print fused elementwise SymPy formulas as C for the Cython backend.

The kernels are plain C (a verbatim block in the generated ``.pyx``), so this printer's C is
compiled as is: no Cython float-literal promotion, no multi-line Piecewise. Every literal
carries the kernel's float type (``0.5f`` in float32) and every math function its suffix
(``expf``), so nothing is silently computed in double. Stable forms stay opaque helpers
(``sb_softplus``, ``sb_sigmoid``) defined once per module in :func:`helpers`.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.c import C99CodePrinter

from symbp.ops import scalar as S

CTYPES = {"float32": "float", "float64": "double"}


PHILOX = """#ifndef SB_PHILOX
#define SB_PHILOX
/* Philox-4x64-10 (Random123; numpy.random.Philox): the block of counter c under key (k0, k1),
   in place. The generator of symbp.ops.random; the NumPy backend calls numpy's. */
static inline uint64_t sb_mulhilo(uint64_t a, uint64_t b, uint64_t *hi) {
#if defined(__SIZEOF_INT128__)
    unsigned __int128 p = (unsigned __int128)a * b;
    *hi = (uint64_t)(p >> 64);
    return (uint64_t)p;
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    *hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return a * b;
#endif
}
static inline void sb_philox(uint64_t c[4], uint64_t k0, uint64_t k1) {
    for (int r = 0; r < 10; r++) {
        uint64_t hi0, hi1;
        const uint64_t lo0 = sb_mulhilo(0xD2E7470EE14C6C93ull, c[0], &hi0);
        const uint64_t lo1 = sb_mulhilo(0xCA5A826395121157ull, c[2], &hi1);
        c[0] = hi1 ^ c[1] ^ k0; c[1] = lo1; c[2] = hi0 ^ c[3] ^ k1; c[3] = lo0;
        k0 += 0x9E3779B97F4A7C15ull; k1 += 0xBB67AE8584CAA73Bull;
    }
}
/* A dropout mask: element i kept (scale) when its 32 bits reach thr, else 0; block b (counter
   (1 + b, stream, step, 0)) gives elements 8b..8b+7, the low half of each word first. The bits
   are made in chunks of 64 blocks by a branch-free loop that gcc vectorises across blocks
   (8x faster than a block at a time; writing the reals there directly kept double from it). */
static void sb_dropout_mask(sb_real *restrict out, long n, uint64_t key, uint64_t step, uint64_t stream,
                            uint32_t thr, sb_real scale) {
    uint32_t u[512];
    for (long base = 0; base < n; base += 512) {
        const long m = n - base < 512 ? n - base : 512;
        for (long b = 0; b < (m + 7) / 8; b++) {
            uint64_t c[4] = {(uint64_t)(base / 8 + b) + 1, stream, step, 0};
            sb_philox(c, key, 0);
            for (int j = 0; j < 4; j++) {
                u[8 * b + 2 * j] = (uint32_t)c[j];
                u[8 * b + 2 * j + 1] = (uint32_t)(c[j] >> 32);
            }
        }
        for (long j = 0; j < m; j++)
            out[base + j] = u[j] >= thr ? scale : (sb_real)0;
    }
}
#endif
"""
"""C of the counter-based generator, defined once in a module whatever function uses it first."""


def helpers(dtype: str) -> str:
    """C definitions of the stable scalar helpers for ``dtype`` (one copy per module)."""
    f = "f" if dtype == "float32" else ""
    t = CTYPES[dtype]
    simd = "\n".join(f'__attribute__((simd("notinbranch"))) {t} {name}{f}({t});' for name in ("exp", "log"))
    pack = _pack_t(dtype)
    simd_235 = "\n".join(f'__attribute__((simd("notinbranch"))) {t} {name}{f}({t});'
                         for name in ("tanh", "expm1", "log1p", "sinh", "cosh"))
    return f"""
/* glibc's libmvec has vector versions of these; declaring them lets gcc vectorise the
   elementwise loops (with -fno-math-errno) without -ffast-math's changes to NaN handling.
   Only when the build links libmvec (codegen.cython.build defines SB_MVEC); a plain build of the
   .pyx keeps scalar calls and needs nothing extra. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__GLIBC__) && defined(SB_MVEC)
#if __GLIBC__ > 2 || __GLIBC_MINOR__ >= 22
{simd}
#endif
#if __GLIBC__ > 2 || __GLIBC_MINOR__ >= 35
{simd_235}
#endif
#endif
typedef {t} sb_real;
static inline sb_real sb_sigmoid(sb_real x) {{
    /* never exp of a large positive number: both branches stay in (0, 1] */
    if (x >= 0) return 1.0{f} / (1.0{f} + exp{f}(-x));
    sb_real e = exp{f}(x);
    return e / (1.0{f} + e);
}}
#if defined(__GNUC__)
/* C = A B for B row-major with N a multiple of 32, C row-major (ldc = N), A at any strides.
   A register-blocked kernel (6 rows x 32 columns of accumulators, B streamed along k):
   at the mid sizes of small networks it beats OpenBLAS's packed gemm (113 vs 93 GFLOP/s
   for 128x256x256 float32 on this machine's Zen 4), and keeps the transposed-A case free. */
#define SB_MM 1
#define SB_NR (64 / (int)sizeof(sb_real) * 2)
#define SB_KC (1024 / (int)sizeof(sb_real))
typedef sb_real sb_vec __attribute__((vector_size(64), aligned(sizeof(sb_real))));
static inline __attribute__((always_inline)) void sb_micro(int mr, long K, const sb_real *A, long ars, long acs,
                                                          const sb_real *B, long ldb, sb_real *C, long ldc, int add) {{
    const int W = 64 / (int)sizeof(sb_real);
    sb_vec acc[6][2];
    for (int r = 0; r < mr; r++) {{  /* add: C += A B (a later block of k) */
        acc[r][0] = add ? *(const sb_vec *)(C + r * ldc) : (sb_vec){{0}};
        acc[r][1] = add ? *(const sb_vec *)(C + r * ldc + W) : (sb_vec){{0}};
    }}
    for (long k = 0; k < K; k++) {{
        sb_vec b0 = *(const sb_vec *)(B + k * ldb), b1 = *(const sb_vec *)(B + k * ldb + W);
        for (int r = 0; r < mr; r++) {{
            sb_real a = A[r * ars + k * acs];
            acc[r][0] += a * b0;
            acc[r][1] += a * b1;
        }}
    }}
    for (int r = 0; r < mr; r++) {{
        *(sb_vec *)(C + r * ldc) = acc[r][0];
        *(sb_vec *)(C + r * ldc + W) = acc[r][1];
    }}
}}
{pack}
#ifdef _OPENMP
#include <omp.h>
/* A parallel region ends when its last thread does: one that starts late, because another
   process holds its core, holds up the product (1-10 ms each, 10-100x the product, on a shared
   machine). A region whose helper starts more than SB_LATE s late makes the products of the next
   sb_backoff s run on one thread; then threads are tried again. The back-off is twice the last
   one, halved for each SB_MEMORY s since, within SB_BACKOFF_MIN..SB_BACKOFF_MAX: another process
   that keeps a core busy makes it 0.1 s within a few late regions, while a quiet machine that
   preempts a helper a few times a minute (1-2 ms each, here) costs 4 ms on one thread each time,
   not 0.1 s (which made ~20 % of the MLP's 2-thread steps serial). Only a region that follows
   another within SB_WARM s is judged: its helper should still be spinning (libgomp spins for a
   few ms), while one asleep takes 50-200 us to wake on an idle core, which is no sign of another
   process. */
#define SB_LATE 1e-4
#define SB_BACKOFF_MIN 4e-3
#define SB_BACKOFF_MAX 0.1
#define SB_MEMORY 1.0
#define SB_WARM 1e-3
static double sb_serial_until, sb_par_end, sb_backoff, sb_late_at;
#endif
static int sb_mm(long M, long N, long K, const sb_real *A, long ars, long acs, const sb_real *B, long brs,
                  long bcs, sb_real *C) {{
    int failed = 0;
    /* Column panels are independent: with OpenMP they are shared among threads, for products
       big enough to pay for waking them (measured 1.7x on 128x256x256 with two free cores), the
       LSTM's 32-row products in its time steps included (2.8-3.1 against 3.1-3.9 ms a step at 2
       threads, quiet machine). Panels are handed out dynamically, so a late thread finds less (or nothing) left
       to do. */
    int par = M * N * K >= (1L << 20);
#ifdef _OPENMP
    double t0 = 0, until, last;
    int warm = 0;
    if (par) {{
        t0 = omp_get_wtime();
        #pragma omp atomic read
        until = sb_serial_until;
        #pragma omp atomic read
        last = sb_par_end;
        par = t0 >= until;
        warm = t0 - last < SB_WARM;
    }}
#endif
    #pragma omp parallel if (par)
    {{
#ifdef _OPENMP
    if (warm && omp_get_thread_num() == 1 && omp_get_wtime() - t0 > SB_LATE) {{  /* once a region */
        double now = omp_get_wtime(), len, at;
        #pragma omp atomic read
        len = sb_backoff;
        #pragma omp atomic read
        at = sb_late_at;
        len *= 2 * exp2((at - now) / SB_MEMORY);
        len = len < SB_BACKOFF_MIN ? SB_BACKOFF_MIN : len > SB_BACKOFF_MAX ? SB_BACKOFF_MAX : len;
        #pragma omp atomic write
        sb_backoff = len;
        #pragma omp atomic write
        sb_late_at = now;
        now += len;
        #pragma omp atomic write
        sb_serial_until = now;
    }}
#endif
    #pragma omp for schedule(dynamic)
    for (long j = 0; j < N; j += SB_NR) {{
        const sb_real *Bj = B + j * bcs;
        long ldb = brs;
        sb_real *panel = NULL;
        if (bcs != 1) {{  /* a transposed B is packed one panel at a time, as BLAS would */
            panel = (sb_real *)malloc((size_t)K * SB_NR * sizeof(sb_real));
            if (!panel) {{
                #pragma omp atomic write
                failed = 1;
                continue;
            }}
            sb_pack_t(K, Bj, brs, bcs, panel);
            Bj = panel;
            ldb = SB_NR;
        }}
        /* k in blocks of SB_KC: the rows of A and the panel of B that a block reads stay in L1. A
           weight gradient summed over the T*B rows of a loop has K = T*B: 64x512 (K = 1024, A
           transposed), 171 -> 215 GFLOP/s on this machine (Zen 5; its FMA peak is ~275). */
        for (long k0 = 0; k0 < K; k0 += SB_KC) {{
            long kc = K - k0 < SB_KC ? K - k0 : SB_KC;
            const sb_real *Ak = A + k0 * acs, *Bk = Bj + k0 * ldb;
            int add = k0 > 0;
            long i = 0;
            for (; i + 6 <= M; i += 6) sb_micro(6, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add);
            switch (M - i) {{
            case 5: sb_micro(5, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add); break;
            case 4: sb_micro(4, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add); break;
            case 3: sb_micro(3, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add); break;
            case 2: sb_micro(2, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add); break;
            case 1: sb_micro(1, kc, Ak + i * ars, ars, acs, Bk, ldb, C + i * N + j, N, add); break;
            }}
        }}
        free(panel);
    }}
    }}
#ifdef _OPENMP
    if (par) {{
        double t1 = omp_get_wtime();
        #pragma omp atomic write
        sb_par_end = t1;
    }}
#endif
    return failed;  /* on an allocation failure the caller recomputes C with BLAS */
}}
#endif
static inline sb_real sb_softplus(sb_real x) {{
    /* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); NaN still propagates through fabs */
    return (x > 0 ? x : 0.0{f}) + log1p{f}(exp{f}(-fabs{f}(x)));
}}
"""


def _pack_t(dtype: str) -> str:
    """C for ``sb_pack_t``: one SB_NR-wide column panel of a transposed B, row-major.

    A scalar copy walks one of the two matrices against its storage order (~1.4 cycles an
    element: 24 us for 256x256 float32, a sixth of the product it feeds); transposing
    W x W blocks held in vector registers with two-input shuffles takes ~5 us. GCC only:
    other compilers keep the scalar copy.
    """
    w = 64 // (4 if dtype == "float32" else 8)
    itype = "int" if dtype == "float32" else "long long"
    stages = []
    b = w // 2
    while b:  # swap the off-diagonal b x b blocks of each 2b x 2b block
        lo = ", ".join(str(w + c - b if c & b else c) for c in range(w))
        hi = ", ".join(str(w + c if c & b else c + b) for c in range(w))
        stages.append(f"                {{ const sb_idx lo = {{{lo}}}, hi = {{{hi}}};\n"
                      f"                  for (int i = 0; i < {w}; i++) if (!(i & {b})) {{\n"
                      f"                      sb_vec x = r[i], y = r[i + {b}];\n"
                      f"                      r[i] = __builtin_shuffle(x, y, lo);\n"
                      f"                      r[i + {b}] = __builtin_shuffle(x, y, hi); }} }}")
        b //= 2
    body = "\n".join(stages)
    return f"""/* panel[k * SB_NR + jj] = B[jj * bcs + k * brs] for jj < SB_NR, k < K */
static void sb_pack_t(long K, const sb_real *B, long brs, long bcs, sb_real *panel) {{
    long k0 = 0;
#if !defined(__clang__)
    typedef {itype} sb_idx __attribute__((vector_size(64)));
    if (brs == 1)
        for (; k0 + {w} <= K; k0 += {w})
            for (long j0 = 0; j0 < SB_NR; j0 += {w}) {{
                sb_vec r[{w}];
                for (int i = 0; i < {w}; i++) r[i] = *(const sb_vec *)(B + (j0 + i) * bcs + k0);
{body}
                for (int c = 0; c < {w}; c++) *(sb_vec *)(panel + (k0 + c) * SB_NR + j0) = r[c];
            }}
#endif
    for (long jj = 0; jj < SB_NR; jj++)
        for (long k = k0; k < K; k++) panel[k * SB_NR + jj] = B[jj * bcs + k * brs];
}}"""


class KernelPrinter(C99CodePrinter):
    """C99 for one dtype: typed literals and functions, x*x instead of pow, stable helpers.

    Args:
        dtype: "float32" or "float64"; the type of every value in the kernel.
    """

    def __init__(self, dtype: str):
        super().__init__()
        self.dtype = dtype
        self.suffix = "f" if dtype == "float32" else ""

    def fn(self, name: str) -> str:
        return name + self.suffix

    def literal(self, value) -> str:
        """A float literal of the kernel's type (Python's repr is the shortest exact form)."""
        text = repr(float(value))
        if "inf" in text or "nan" in text:
            raise ValueError(f"non-finite constant {value!r} in a kernel")
        return text + self.suffix

    def _print_Float(self, e):
        return self.literal(e)

    def _print_Rational(self, e):
        return self.literal(e)

    def _print_Integer(self, e):
        return self.literal(e)

    def _print_NumberSymbol(self, e):
        return self.literal(e.evalf(20))

    _print_Exp1 = _print_Pi = _print_NumberSymbol

    def _print_Pow(self, e):
        """Small integer powers as products (exact and vectorisable); roots as sqrt."""
        base, ex = e.base, e.exp
        if base.is_number and ex.is_number:
            return self.literal(e.evalf(20))
        if ex.is_Integer and 1 <= abs(int(ex)) <= 4:
            prod = "*".join([f"({self._print(base)})"] * abs(int(ex)))
            return f"({prod})" if ex > 0 else f"({self.literal(1)}/({prod}))"
        if ex == sp.Rational(1, 2):
            return f"{self.fn('sqrt')}({self._print(base)})"
        if ex == sp.Rational(-1, 2):
            return f"({self.literal(1)}/{self.fn('sqrt')}({self._print(base)}))"
        return f"{self.fn('pow')}({self._print(base)}, {self._print(ex)})"

    def _unary(self, name: str, e) -> str:
        return f"{self.fn(name)}({self._print(e.args[0])})"

    def _print_exp(self, e): return self._unary("exp", e)
    def _print_log(self, e): return self._unary("log", e)
    def _print_tanh(self, e): return self._unary("tanh", e)
    def _print_sinh(self, e): return self._unary("sinh", e)
    def _print_cosh(self, e): return self._unary("cosh", e)
    def _print_Abs(self, e): return self._unary("fabs", e)
    def _print_expm1(self, e): return self._unary("expm1", e)
    def _print_log1p(self, e): return self._unary("log1p", e)
    def _print_sigmoid(self, e): return f"sb_sigmoid({self._print(e.args[0])})"
    def _print_softplus(self, e): return f"sb_softplus({self._print(e.args[0])})"

    def _print_sign(self, e):
        x = self._print(e.args[0])
        return f"(sb_real)(({x} > 0) - ({x} < 0))"

    def _print_select(self, e):
        c, a, b = (self._print(x) for x in e.args)
        return f"(({c}) > 0 ? ({a}) : ({b}))"

    def _print_relu(self, e):
        # (x < 0 ? 0 : x) lets a NaN through, as numpy's maximum(x, 0) does
        x = self._print(e.args[0])
        return f"(({x}) < 0 ? {self.literal(0)} : ({x}))"

    def _print_elu(self, e):
        x, alpha = (self._print(a) for a in e.args)
        return f"(({x}) > 0 ? ({x}) : ({alpha})*{self.fn('expm1')}({x}))"

    def _print_Function(self, e):
        raise NotImplementedError(f"cython backend: no C printer for {e.func.__name__}")


KNOWN = {f.__name__ for f in S.FUNCTIONS}
"""Custom functions the printer knows (a test checks this covers symbp.ops.scalar.FUNCTIONS)."""


def kernel_body(expr: sp.Expr, printer: KernelPrinter, target: str, prefix: str = "c") -> list[str]:
    """C statements computing ``expr`` into ``target`` after common-subexpression removal.

    Args:
        expr: formula over symbols already bound to C locals of the same names.
        printer: the dtype's KernelPrinter.
        target: the lvalue to assign.
        prefix: name prefix of the CSE temporaries.
    Returns:
        Lines of C.
    """
    subs, (final,) = sp.cse(expr, symbols=sp.numbered_symbols(f"_{prefix}", real=True), order="none")
    lines = [f"const sb_real {sym} = {printer.doprint(sub)};" for sym, sub in subs]
    lines.append(f"{target} = {printer.doprint(final)};")
    return lines
