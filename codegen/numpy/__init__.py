"""The NumPy backend: a readable Python module that imports only NumPy.

- ``emitter``: ``emit(spec) -> source``; every structural op's emitter in its ``EMIT`` table;
- ``printer``: SymPy's Python printer for fused elementwise kernels (ufunc calls with ``out=``);
- ``loops``: recurrences (``scan``) as Python loops over time;
- ``conv``: convolution and pooling through im2col and strided views;
- ``random``: dropout masks (NumPy's Philox-4x64-10, the generator ``symbp.ops.random`` specifies);
- ``package``: the files of a standalone package.

May import ``codegen.spec``, ``codegen.naming`` and the ``symbp`` core; never the other backends.

To emit a new structural op: a function in ``EMIT`` (``emitter``, or the module of its
family); a new elementwise op needs nothing here if its formula prints with SymPy.
"""
