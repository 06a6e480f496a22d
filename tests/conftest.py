"""Shared fixtures: the kernel backends every kernel test runs on."""
import os

import pytest

from cupyvae.executors import cuda_available  # noqa: F401  (tests import it from here too)


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    """'emulated' always; 'cuda' only where CuPy sees a GPU (skipped cleanly otherwise)."""
    if request.param == "cuda" and not cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return request.param


def pytest_configure(config):
    """Under compute-sanitizer memcheck (benchmarks/gpu_first_look.py sets
    CUPYVAE_MEMCHECK=1), CuPy allocates every array with its own cudaMalloc instead of
    carving it from the memory pool, so an access past an array's end is past an
    allocation, where memcheck sees it."""
    if os.environ.get("CUPYVAE_MEMCHECK") and cuda_available():
        import cupy

        cupy.cuda.set_allocator(None)
