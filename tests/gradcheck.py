"""Central finite differences in float64, and an error report that says where."""
import numpy as np

# Central differences have truncation error O(h^2 f''') ~ 1e-10 and round-off
# O(1e-16 / h) ~ 1e-11 at h = 1e-5 in float64, so a correct gradient agrees to ~1e-8
# relative; 1e-6 still catches a gradient that is wrong by one part in a million.
STEP = 1e-5
RTOL = 1e-6


def numeric_grad(f, x: np.ndarray, h: float = STEP) -> np.ndarray:
    """d f / d x for scalar f, perturbing x in place one entry at a time."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


def assert_grad_close(analytic, numeric, name: str, rtol: float = RTOL) -> None:
    """max |a - n| <= rtol * max(|n|_inf, 1): relative for large gradients, absolute near 0."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    assert analytic.shape == numeric.shape, f"{name}: shape {analytic.shape} vs {numeric.shape}"
    err = np.abs(analytic - numeric)
    scale = max(float(np.abs(numeric).max(initial=0.0)), 1.0)
    worst = np.unravel_index(int(err.argmax()), err.shape) if err.size else ()
    assert err.max(initial=0.0) <= rtol * scale, (
        f"{name}: max abs err {err.max():.3e} at {worst} (analytic {analytic[worst]:.8g}, "
        f"numeric {numeric[worst]:.8g}), scale {scale:.3g}, rtol {rtol:g}")
