"""The Cython backend: a .pyx of C kernels compiled for this CPU (-O3 -march=native), cached.

- ``emitter``: ``emit(spec) -> source``; its ``EMIT``/``VIEWS`` tables merge those of the modules below;
- ``printer``: SymPy's C99 printer for fused elementwise kernels, the C helpers and vector types;
- ``kernels``: buffer views and the structural ops' C loops (copies, reductions, products);
- ``loops``: recurrences (``scan``) as C loops over time, one C function per step body;
- ``conv``, ``conv_direct``: convolution and pooling (im2col + gemm, and register-blocked
  direct loops at small channel counts);
- ``module``: the Python-facing glue of the generated module (buffers, BLAS, checks);
- ``build``: compile with Cython and the C compiler into a content-addressed cache;
- ``cache``: the cache's folder: entries, builds killed midway, a fallback when it is not writable;
  and ``graph_key``, the warm-start key: a hash of the forward graph and the options, computed
  before derivation and without SymPy;
- ``package``: the files of a standalone package.

May import ``codegen.spec``, ``codegen.naming`` and the ``symbp`` core; never the NumPy backend.

To emit a new structural op: a function in the ``EMIT`` table of the module of its family,
and a case in the differential tests against the NumPy backend (tests/test_cython.py).
"""
