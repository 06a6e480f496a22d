"""Exception type of the CUDA emulator (kept in its own module to avoid import cycles)."""


class EmulatorError(RuntimeError):
    """A launch or build problem a GPU would report badly or not at all.

    Raised for: divergent ``__syncthreads``/warp operations, deadlocks, ``__trap()``,
    bad launch configurations, unsupported compile options, and g++ errors (the
    message then contains the compiler log).
    """


EmulatorError.__module__ = "cupyvae.emulator"
