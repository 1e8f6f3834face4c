"""Arrow's memory pool: jemalloc for every process that reads manifests, unless the user named one."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow

PROBE = ("import pyarrow; from trainset import manifest; "
         "print(pyarrow.default_memory_pool().backend_name)")


def _pool_after_import(**env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_reading_manifests_uses_jemalloc():
    pyarrow.jemalloc_memory_pool()  # this platform's pyarrow has it (raises NotImplementedError otherwise)
    assert _pool_after_import() == "jemalloc"


def test_a_pool_named_in_the_environment_is_kept():
    assert _pool_after_import(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
    assert _pool_after_import(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
