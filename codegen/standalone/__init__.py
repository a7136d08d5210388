"""Standalone training packages: a folder that pip installs and that never imports symbp.

Stage: after the backends. ``writer`` lays out the folder from the templates in ``files/``
(linted like any module), the runtime's ``trainer.py``/``training.py`` and the files a
backend's packager supplies (``codegen.<backend>.package``).

To package a new backend: give it a ``package.files(spec, name) -> BackendFiles`` and add
it to ``writer.PACKAGERS``.
"""

from codegen.standalone.writer import PACKAGERS, BackendFiles, write

__all__ = ["PACKAGERS", "BackendFiles", "write"]
