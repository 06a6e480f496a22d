"""Shared fixtures: the kernel backends every kernel test runs on."""
import pytest

from cupyvae.executors import cuda_available  # noqa: F401  (tests import it from here too)


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    """'emulated' always; 'cuda' only where CuPy sees a GPU (skipped cleanly otherwise)."""
    if request.param == "cuda" and not cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return request.param
