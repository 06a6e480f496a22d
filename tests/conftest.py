"""Shared fixtures: the kernel backends every kernel test runs on."""
import pytest


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, or no device: all mean "no GPU here"
        return False


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    """'emulated' always; 'cuda' only where CuPy sees a GPU (skipped cleanly otherwise)."""
    if request.param == "cuda" and not cuda_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return request.param
