"""kernels/vamp_prior.cu (the VampPrior's pseudo-input bound) against its NumPy twins
(cupyvae.distributions.vamp), on every backend.  Both sides are exact (a clamp and a mask),
so they must agree bit for bit."""
import dataclasses

import numpy as np
import pytest

from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import load_source, module_from_source
from cupyvae.distributions import vamp

SHAPES = [(1, 1), (3, 7), (500, 33), (37, 784)]   # K in {1, 3, 500}; no size a block multiple


def pseudo_inputs(k, d, seed=0):
    """Values inside (0, 1), beyond both ends, and exactly on the bound."""
    w = np.random.default_rng(seed).uniform(-0.5, 1.5, (k, d)).astype(np.float32)
    w.flat[:4] = [0.0, 1.0, -0.0, np.nextafter(np.float32(1), np.float32(0))][:w.size]
    return w


def forward(backend, w, grid=None):
    u = to_device(np.full(w.shape, np.nan, np.float32), backend)   # NaN prefill: `=` everywhere
    launch = ops.vamp_pseudo_inputs_forward(to_device(w, backend), u)
    run(dataclasses.replace(launch, grid=grid) if grid else launch, backend)
    return to_host(u)


def backward(backend, w, du, grid=None):
    dw = to_device(np.full(w.shape, np.nan, np.float32), backend)
    launch = ops.vamp_pseudo_inputs_backward(to_device(w, backend), to_device(du, backend), dw)
    run(dataclasses.replace(launch, grid=grid) if grid else launch, backend)
    return to_host(dw)


@pytest.mark.parametrize("shape", SHAPES)
def test_bound_matches_twin_exactly(backend, shape):
    w = pseudo_inputs(*shape, seed=shape[0])
    du = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    u = forward(backend, w)
    np.testing.assert_array_equal(u, vamp.vamp_pseudo_inputs_forward(w), err_msg="u")
    assert u.min() >= 0 and u.max() <= 1
    dw = backward(backend, w, du)
    np.testing.assert_array_equal(dw, vamp.vamp_pseudo_inputs_backward(w, du), err_msg="dw")
    inside = (w > 0) & (w < 1)
    np.testing.assert_array_equal(dw[~inside], 0.0, err_msg="no gradient at or beyond the bound")
    np.testing.assert_array_equal(dw[inside], du[inside])


def test_grid_stride_and_thread_order_do_not_matter():
    w = pseudo_inputs(37, 784, seed=2)
    du = np.random.default_rng(2).normal(0, 1, w.shape).astype(np.float32)
    np.testing.assert_array_equal(forward("emulated", w, grid=(3,)), vamp.vamp_pseudo_inputs_forward(w))
    np.testing.assert_array_equal(backward("emulated", w, du, grid=(2,)),
                                  vamp.vamp_pseudo_inputs_backward(w, du))
    module = module_from_source(load_source("vamp_prior"), "emulated", thread_order="random", seed=3)
    u = np.full(w.shape, np.nan, np.float32)
    launch = ops.vamp_pseudo_inputs_forward(w, u)
    module.get_function(launch.entry)(launch.grid, launch.block, launch.args)
    np.testing.assert_array_equal(u, vamp.vamp_pseudo_inputs_forward(w))


def test_nan_pseudo_inputs_stay_visible(backend):
    """A NaN parameter must not be clamped into a valid-looking pixel (np.clip keeps it)."""
    w = np.array([[np.nan, 0.5]], np.float32)
    assert np.isnan(forward(backend, w)[0, 0]) and np.isnan(vamp.vamp_pseudo_inputs_forward(w)[0, 0])


def test_builders_refuse_bad_shapes():
    w = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="u must have the shape of w"):
        ops.vamp_pseudo_inputs_forward(w, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="du must have the shape of w"):
        ops.vamp_pseudo_inputs_backward(w, np.zeros((3, 5), np.float32), w.copy())
    with pytest.raises(ValueError, match="pseudo-inputs"):
        ops.vamp_pseudo_inputs_forward(np.zeros(4, np.float32), np.zeros(4, np.float32))
