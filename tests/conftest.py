import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def _symbp_build_env(tmp_path_factory):
    """Compiled modules go to one cache per test session (shared by every test in the run),
    and are built at -O1 unless the caller chose flags: a third of -O3's compile time."""
    import os

    saved = {k: os.environ.get(k) for k in ("SYMBP_CACHE_DIR", "SYMBP_CFLAGS")}
    os.environ.setdefault("SYMBP_CACHE_DIR", str(tmp_path_factory.mktemp("symbp-cache")))
    os.environ.setdefault("SYMBP_CFLAGS", "-O1")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
