"""The NumPy path's speed-ups change no number: each rewritten function is compared bit for
bit with the plain formulation it replaced (kept here as the oracle), on hostile inputs.

What was rewritten and why it cannot change a value: the same IEEE operations run on the
same operands in the same order; only temporaries, NumPy's slow paths (np.where on a
random mask, np.maximum against a Python scalar) and the Philox rounds' passes were cut.
"""
import numpy as np
import pytest

from cupyvae import philox
from cupyvae.distributions.bernoulli import bernoulli_log_prob, bernoulli_nll, sigmoid
from cupyvae.executors import NOISE_AHEAD_ELEMENTS, NumpyExecutor, binarize_batch, posterior_noise
from cupyvae.layers import ACTIVATIONS
from cupyvae.objectives import objective_for
from cupyvae.optim import Adam, adam_update, grad_clip_scale, grad_norm_partials
from cupyvae.schedules import SCHED_KL_WEIGHT, hyper_array, schedule_step
from cupyvae.spec import ModelSpec
from cupyvae.config import VAEConfig
from cupyvae.training import TrainingOptions


# ------------------------------------------------------------- the previous formulations
def previous_bernoulli_nll(logits, x, scale):
    e = np.exp(-np.abs(logits))
    nll = np.maximum(logits, 0)
    nll -= x * logits
    nll += np.log1p(e)
    dlogits = np.where(logits >= 0, 1, e)
    dlogits /= 1 + e
    dlogits -= x
    dlogits *= scale
    return nll.sum(axis=1), dlogits.astype(logits.dtype, copy=False)


def previous_sigmoid(l):
    e = np.exp(-np.abs(l))
    return np.where(l >= 0, 1 / (1 + e), e / (1 + e)).astype(l.dtype, copy=False)


def bits(a: np.ndarray) -> bytes:
    """The exact bytes (so -0.0 != 0.0 and NaN payloads count)."""
    return np.ascontiguousarray(a).tobytes()


def hostile_logits(dtype, rows=7, cols=301, seed=0):
    """Normal logits with the corners spliced in: +-0, +-50, +-100 (exp underflows to a
    subnormal or 0), +-inf, NaN; 301 columns so no SIMD width divides a row."""
    rng = np.random.default_rng(seed)
    l = (rng.standard_normal((rows, cols)) * 8).astype(dtype)
    corners = np.array([0.0, -0.0, 50, -50, 100, -100, 88.5, -88.5, 1e-30, -1e-30], dtype)
    l[0, :len(corners)] = corners
    l[1, :3] = [np.inf, -np.inf, np.nan]
    return l


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_kind", ["binary", "grey", "float64 grey"])
def test_bernoulli_nll_is_bit_identical_to_the_plain_formulation(dtype, x_kind):
    logits = hostile_logits(dtype)
    rng = np.random.default_rng(1)
    x = {"binary": (rng.random(logits.shape) < 0.4).astype(dtype),
         "grey": rng.random(logits.shape).astype(dtype),
         "float64 grey": rng.random(logits.shape)}[x_kind]
    with np.errstate(invalid="ignore"):        # inf - inf in the corner rows, on both sides
        for scale in (1.0, 1 / 7, np.float32(0.25)):
            nll, dlogits = bernoulli_nll(logits, x, scale)
            want_nll, want_d = previous_bernoulli_nll(logits, x, scale)
            assert nll.dtype == want_nll.dtype and dlogits.dtype == want_d.dtype
            assert bits(nll) == bits(want_nll), np.flatnonzero(nll != want_nll)
            assert bits(dlogits) == bits(want_d), np.argwhere(dlogits != want_d)[:5]
        assert bits(bernoulli_log_prob(logits, x)) == bits(-previous_bernoulli_nll(logits, x, 1.0)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_bit_identical_to_the_plain_formulation(dtype):
    logits = hostile_logits(dtype)
    assert bits(sigmoid(logits)) == bits(previous_sigmoid(logits))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_equals_maximum_with_zero_bit_for_bit(dtype):
    a = hostile_logits(dtype)
    want = np.maximum(a, 0)
    assert bits(ACTIVATIONS.get("relu").forward(a.copy())) == bits(want)


# ------------------------------------------------------------------------------- Philox
def philox_by_counters(seed, step, rows, cols, stream):
    """x0, x1 of every element through philox4x32 on explicit counters (the generic path,
    checked against Random123's known answers in test_philox.py)."""
    row, col = np.divmod(np.arange(rows * cols, dtype=np.uint64), cols)
    counters = np.stack([col, row, np.full_like(row, step), np.full_like(row, stream)])
    key = np.array(philox.split_seed(seed), np.uint32)
    words = philox.philox4x32(counters, key)
    return words[0].reshape(rows, cols), words[1].reshape(rows, cols)


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 16385), (70, 301), (1000, 33)])
def test_draws_spanning_several_blocks_match_the_counter_definition(rows, cols):
    assert rows * cols > philox._BLOCK_ELEMENTS or rows * cols == 1
    seed, step, stream = 0xDEADBEEF12345, 77, philox.STREAM_BINARIZE
    x0, x1 = philox_by_counters(seed, step, rows, cols, stream)
    np.testing.assert_array_equal(philox.uniform(seed, step, rows, cols, stream),
                                  philox.uniform_from_bits(x0))
    np.testing.assert_array_equal(
        philox.normal(seed, step, rows, cols, stream),
        philox.box_muller(philox.uniform_from_bits(x0), philox.uniform_from_bits(x1)))


@pytest.mark.parametrize("rows, cols, n_steps", [(100, 2, 90), (100, 20, 20), (7, 33, 80),
                                                 (1, 1, 3), (3, 6000, 2)])
def test_normal_steps_are_the_per_step_draws(rows, cols, n_steps):
    block = philox.normal_steps(11, 2 ** 32 - n_steps, n_steps, rows, cols, philox.STREAM_POSTERIOR)
    assert block.shape == (n_steps, rows, cols) and block.dtype == np.float32
    for i in range(n_steps):
        assert bits(block[i]) == bits(philox.normal(11, 2 ** 32 - n_steps + i, rows, cols,
                                                    philox.STREAM_POSTERIOR)), i


def test_normal_steps_refuse_a_step_past_uint32():
    with pytest.raises(ValueError, match="last step"):
        philox.normal_steps(0, 2 ** 32 - 2, 3, 2, 2)


def test_posterior_noise_yields_the_per_step_draws_across_draw_ahead_groups():
    batch, z_dim = 64, 512        # 8 steps per group of NOISE_AHEAD_ELEMENTS
    per_group = NOISE_AHEAD_ELEMENTS // (batch * z_dim)
    n_steps = 2 * per_group + 3
    got = list(posterior_noise(5, 1000, n_steps, batch, z_dim))
    assert len(got) == n_steps
    for i, eps in enumerate(got):
        assert bits(eps) == bits(philox.normal(5, 1000 + i, batch, z_dim, philox.STREAM_POSTERIOR))


# ------------------------------------------------------------------------ the training loop
def previous_train_epoch(executor, x, perm, options, optimizer):
    """NumpyExecutor.train_epoch as it was on main: one Philox draw and one fancy-index
    gather per step, on `executor`'s buffers."""
    objective = objective_for(options)
    spec, batch_size = executor.spec, options.batch_size
    seed, z_dim = spec.config.seed, spec.latent_dim
    hyper = hyper_array(options, optimizer)
    total = 0.0
    for i in range(len(perm) // batch_size):
        step = optimizer.step_count
        sched = schedule_step(np.array([step, 0], np.uint32), hyper)
        xb = x[perm[i * batch_size:(i + 1) * batch_size]]
        if options.binarize:
            xb = binarize_batch(xb, seed, step)
        eps = philox.normal(seed, step, objective.noise_rows(batch_size), z_dim,
                            philox.STREAM_POSTERIOR)
        total += objective.loss_and_grads(spec, executor.params, executor.grads, xb, eps,
                                          kl_weight=float(sched[SCHED_KL_WEIGHT]))
        if options.clip_norm is not None:
            grad_clip_scale(grad_norm_partials(executor.grad_flat, executor._partials), hyper,
                            sched)
        adam_update(executor.flat, executor.grad_flat, executor.m, executor.v, sched,
                    executor._scratch)
        optimizer.step_count += 1
    return total / (len(perm) // batch_size)


# IWAE draws k rows of noise per example (objective.noise_rows); 13 x 5 x 3 = 195 rows.
@pytest.mark.parametrize("changes", [{}, {"binarize": True},
                                     {"objective": "iwae", "iw_samples": 5, "binarize": True},
                                     {"kl_warmup_steps": 7, "clip_norm": 0.5,
                                      "lr_warmup_steps": 3}])
def test_train_epoch_is_bit_identical_to_the_plain_loop(changes):
    spec = ModelSpec(VAEConfig(data_shape=(37,), latent_dim=3, hidden=(19,), seed=4))
    x = np.random.default_rng(0).random((130, 37)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(130)
    options = TrainingOptions(batch_size=13, **changes)
    ours = NumpyExecutor(spec)
    theirs = NumpyExecutor(spec)
    flat = spec.layout.zeros()
    spec.init_params(flat)
    ours.load_flat(flat)
    theirs.load_flat(flat)
    opt_ours, opt_theirs = Adam(), Adam()
    for _ in range(2):
        a = ours.train_epoch(x, perm, options, opt_ours)
        b = previous_train_epoch(theirs, x, perm, options, opt_theirs)
        assert a == b
    assert opt_ours.step_count == opt_theirs.step_count == 20
    assert bits(ours.flat) == bits(theirs.flat)
    for name, got, want in zip(("adam m", "adam v"), ours.host_moments(), theirs.host_moments()):
        assert bits(got) == bits(want), name
