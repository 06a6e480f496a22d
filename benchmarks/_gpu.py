"""What the GPU benchmarks share."""
from __future__ import annotations

import sys


def require_gpu() -> None:
    """Exit at once, with a clear message, where CuPy sees no GPU (before importing torch)."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or CUDARuntimeError without driver/device
        sys.exit(f"no CUDA GPU: CuPy cannot reach one ({type(exc).__name__}: {exc}); "
                 "this benchmark needs a GPU (smoke-test the harness with --device emulated --tiny)")
    if count < 1:
        sys.exit("no CUDA GPU: CuPy sees 0 devices")
