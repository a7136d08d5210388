"""The sanitizer build: ``$SYMBP_SANITIZE=1`` compiles the kernels with AddressSanitizer and
UndefinedBehaviorSanitizer, so an out-of-bounds access or undefined behaviour in generated C is
reported where it happens (CI runs the zoo this way, see .ci/run and the README).

The host Python is not instrumented, so it must load the ASan runtime before anything else:
``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0`` (CPython's own
allocations look like leaks to ASan). The flags are part of the build's cache key, so a
sanitized module never stands in for a plain one or the reverse.
"""

from __future__ import annotations

import os
import sys

from symbp.ir import SymbpError

FLAGS = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer")
"""Added to the kernels' compile and to the link."""


def flags() -> tuple[str, ...]:
    """:data:`FLAGS` when ``$SYMBP_SANITIZE`` is set (not "0"), else ().

    Raises:
        SymbpError: sanitizing, but the ASan runtime is not preloaded (importing the module
            would otherwise end the process with ASan's own message).
    """
    if os.environ.get("SYMBP_SANITIZE", "0") in ("", "0"):
        return ()
    if sys.platform.startswith("linux") and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise SymbpError("SYMBP_SANITIZE is set, so kernels are built with AddressSanitizer, whose runtime must "
                         "be loaded before Python: run with LD_PRELOAD=$(gcc -print-file-name=libasan.so) "
                         "ASAN_OPTIONS=detect_leaks=0 (or unset SYMBP_SANITIZE)")
    return FLAGS


def tool_env() -> dict | None:
    """The environment for the compiler and Cython subprocesses: without the preloaded ASan
    runtime (they are not instrumented; under it they only run slower), or None (inherit)."""
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        return None
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
