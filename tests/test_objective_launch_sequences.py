"""The launch sequences for IWAE, free bits and the importance-sampled log-likelihood,
written out by hand from the kernels, against the NumPy reference on the emulator (and CUDA
when present).

They were the executable specification of the plan fragments the kernel executor now
composes (cupyvae/cuda/fragments.py: IwaeFragment, ElboFragment with free bits,
KernelExecutor.log_likelihood; tests/test_kernel_plan.py checks the composed plan).  Here
the prior's two steps run through its NumPy twin between launches, marked "prior:" (the
fragments use mixture_prior.cu for every prior, the normal one included).
"""
import numpy as np
import pytest

import cupyvae
from cupyvae import philox
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.reference import encode_raw, iwae_loss_and_grads, negative_elbo_and_grads

# float32 kernels vs the float32 NumPy reference from identical parameters and noise: they
# differ by summation order and a few ulp of expf/logf (see tests/test_executor.py).
STEP_RTOL = 1e-5
SEED, STEP = 7, 3
ONE = np.ones(1, np.float32)     # the KL weight of the ELBO (a slot of the device's sched)


def assert_close(got, want, name, rtol=STEP_RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    err = np.abs(got - want).max(initial=0.0)
    assert err <= rtol * scale, f"{name}: max err {err:.3e}, scale {scale:.3g}"


class Chain:
    """A model's parameters and gradients on a backend, and the MLP launches over them."""

    def __init__(self, model: cupyvae.VAE, backend: str):
        self.model, self.backend, self.spec = model, backend, model.spec
        self.flat = to_device(model.flat_params.copy(), backend)
        self.grad_flat = to_device(np.zeros_like(model.flat_params), backend)
        self.params = self.spec.layout.views(self.flat)
        self.grads = self.spec.layout.views(self.grad_flat)

    def buffer(self, *shape, fill=np.nan):
        return to_device(np.full(shape, fill, np.float32), self.backend)

    def activations(self, layers, rows, first_width):
        return [self.buffer(rows, w) for w in [first_width] + [layer.n_out for layer in layers]]

    def forward(self, layers, acts):
        return [ops.linear_forward(acts[i], self.params[f"{layer.name}.weight"],
                                   self.params[f"{layer.name}.bias"], layer.activation, acts[i + 1])
                for i, layer in enumerate(layers)]

    def backward(self, layers, acts, top_grad, input_grad):
        """top_grad: d loss / d pre-activation of the last layer (outputs are linear);
        input_grad receives d input (None: not needed)."""
        launches, grad = [], top_grad
        for i in reversed(range(len(layers))):
            layer = layers[i]
            target = input_grad if i == 0 else self.buffer(*acts[i].shape)
            below = layers[i - 1].activation if i > 0 else "identity"
            launches.append(ops.linear_backward(acts[i], self.params[f"{layer.name}.weight"], grad,
                                                below, self.grads[f"{layer.name}.weight"],
                                                self.grads[f"{layer.name}.bias"], target))
            grad = target
        return launches

    def host_grads(self):
        return self.spec.layout.views(np.array(to_host(self.grad_flat)))


def model_and_batch(seed=3, batch=3, hidden=(5,)):
    # glorot pinned: with it the free-bits test's two latent dimensions have batch-mean KLs
    # far enough apart (> 1e-3) to put the floor between them; the default init need not.
    model = cupyvae.VAE((6,), latent_dim=2, hidden=hidden, activation="tanh", seed=seed,
                        init="glorot")
    model.flat_params[...] += 0.1 * np.random.default_rng(seed).standard_normal(model.flat_params.shape)
    x = (np.random.default_rng(seed + 1).random((batch, 6)) < 0.5).astype(np.float32)
    return model, x


@pytest.mark.parametrize("k", [1, 4])
def test_iwae_step_sequence_matches_the_reference(backend, k):
    model, x = model_and_batch()
    chain = Chain(model, backend)
    spec, batch, z_dim = model.spec, len(x), 2
    rows = batch * k
    counters = to_device(np.array([STEP, 0], np.uint32), backend)
    enc = chain.activations(spec.encoder, batch, 6)
    enc[0][...] = to_device(x, backend)
    q_rows, x_rows = chain.buffer(rows, 2 * z_dim), chain.buffer(rows, 6)
    dec = chain.activations(spec.decoder, rows, z_dim)          # dec[0] is z
    kl_unused, log_q, nll = chain.buffer(rows), chain.buffer(rows), chain.buffer(rows)
    dp_raw = chain.buffer(rows, 6)
    bound, g = chain.buffer(batch), chain.buffer(rows)
    dz, dq_rows, dq_raw = chain.buffer(rows, z_dim), chain.buffer(rows, 2 * z_dim), chain.buffer(batch, 2 * z_dim)
    losses = chain.buffer(1)

    run([*chain.forward(spec.encoder, enc),                                   # q_raw (B, 2Z)
         ops.repeat_rows(enc[-1], k, q_rows),                                 # (B*k, 2Z)
         ops.repeat_rows(enc[0], k, x_rows),                                  # (B*k, D)
         ops.gaussian_posterior_forward(q_rows, counters, SEED, philox.STREAM_POSTERIOR,
                                        dec[0], kl_unused),                   # z: Philox row b*k+i
         ops.gaussian_posterior_log_q(q_rows, counters, SEED, philox.STREAM_POSTERIOR, log_q),
         *chain.forward(spec.decoder, dec),
         ops.bernoulli_nll(dec[-1], x_rows, 1.0, nll, dp_raw)], backend)
    z = np.array(to_host(dec[0]))
    log_p = to_device(spec.prior.log_prob(z, {}).astype(np.float32), backend)   # prior: log p(z)
    run([ops.iwae_weights(nll, log_p, log_q, k, 1.0 / batch, bound, g),
         ops.scale_rows(dp_raw, g),
         *chain.backward(spec.decoder, dec, dp_raw, dz)], backend)
    g_host = np.array(to_host(g))
    dz[...] = to_device(np.array(to_host(dz)) - g_host[:, None] * spec.prior.log_prob_grads(z, {})[0],
                        backend)                                             # prior: dz -= g dlog p/dz
    run([ops.gaussian_posterior_weighted_backward(q_rows, dz, g, counters, SEED,
                                                  philox.STREAM_POSTERIOR, dq_rows),
         ops.sum_row_groups(dq_rows, k, dq_raw),
         *chain.backward(spec.encoder, enc, dq_raw, None),
         ops.end_step(bound, chain.buffer(batch, fill=0.0), to_device(ONE, backend), counters,
                      losses)], backend)

    grads = spec.layout.views(spec.layout.zeros())
    eps = philox.normal(SEED, STEP, rows, z_dim, philox.STREAM_POSTERIOR)
    loss = iwae_loss_and_grads(spec, model.params, grads, x, eps, k)
    assert float(to_host(losses)[0]) == pytest.approx(loss, rel=STEP_RTOL)
    for name, value in chain.host_grads().items():
        assert_close(value, grads[name], f"IWAE k={k} d{name}")


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_free_bits_step_sequence_matches_the_reference(backend, beta):
    model, x = model_and_batch(batch=5)
    chain = Chain(model, backend)
    spec, batch, z_dim = model.spec, len(x), 2
    counters = to_device(np.array([STEP, 0], np.uint32), backend)
    eps = philox.normal(SEED, STEP, batch, z_dim, philox.STREAM_POSTERIOR)
    kl_mean = spec.kl_per_dimension(encode_raw(spec, model.params, x))[0].mean(axis=0)
    floor = float(kl_mean.mean())                                           # between the two dimensions
    assert np.min(np.abs(kl_mean - floor)) > 1e-3

    enc = chain.activations(spec.encoder, batch, 6)
    enc[0][...] = to_device(x, backend)
    dec = chain.activations(spec.decoder, batch, z_dim)
    kl, kl_dim = chain.buffer(batch), chain.buffer(batch, z_dim)
    active, kl_means = chain.buffer(z_dim), chain.buffer(z_dim)
    nll, dp_raw, dz = chain.buffer(batch), chain.buffer(batch, 6), chain.buffer(batch, z_dim)
    dq_raw, losses = chain.buffer(batch, 2 * z_dim), chain.buffer(1)
    kl_weight = to_device(np.array([beta], np.float32), backend)      # a slot of the device's sched
    run([*chain.forward(spec.encoder, enc),
         ops.gaussian_posterior_forward(enc[-1], counters, SEED, philox.STREAM_POSTERIOR, dec[0], kl),
         ops.gaussian_posterior_kl_per_dimension(enc[-1], kl_dim),
         ops.free_bits_kl(kl_dim, floor, kl, active, kl_means),           # kl <- the floored rows
         *chain.forward(spec.decoder, dec),
         ops.bernoulli_nll(dec[-1], enc[0], 1.0 / batch, nll, dp_raw),
         *chain.backward(spec.decoder, dec, dp_raw, dz),
         ops.gaussian_posterior_backward(enc[-1], dz, counters, SEED, philox.STREAM_POSTERIOR,
                                         0.0, kl_weight, dq_raw),   # reparameterization only
         ops.gaussian_posterior_kl_per_dimension_backward(enc[-1], active, beta / batch, dq_raw),
         *chain.backward(spec.encoder, enc, dq_raw, None),
         ops.end_step(nll, kl, kl_weight, counters, losses)], backend)

    grads = spec.layout.views(spec.layout.zeros())
    loss = negative_elbo_and_grads(spec, model.params, grads, x, eps, kl_weight=beta, free_bits=floor)
    # end_step weights the floored KL rows by the device KL weight, as the reference does
    assert float(to_host(losses)[0]) == pytest.approx(loss, rel=STEP_RTOL)
    np.testing.assert_array_equal(to_host(active), (kl_mean > floor).astype(np.float32))
    for name, value in chain.host_grads().items():
        assert_close(value, grads[name], f"free bits beta={beta} d{name}")


def test_log_likelihood_sequence_matches_the_model(backend):
    """Two chunks of samples per example (k = 7 = 4 + 3), merged on the device; the host
    reads one float64 per example."""
    model, x = model_and_batch(batch=3)
    chain = Chain(model, backend)
    spec, examples, z_dim, k = model.spec, len(x), 2, 7
    enc = chain.activations(spec.encoder, examples, 6)
    enc[0][...] = to_device(x, backend)
    run(chain.forward(spec.encoder, enc), backend)
    counters = to_device(np.zeros(2, np.uint32), backend)                  # unused: noise is given
    running_max = to_device(np.full(examples, -np.inf), backend)
    running_sum = to_device(np.zeros(examples), backend)
    for first_sample, samples in ((0, 4), (4, 3)):
        rows = examples * samples
        q_rows, x_rows, eps = chain.buffer(rows, 2 * z_dim), chain.buffer(rows, 6), chain.buffer(rows, z_dim)
        dec = chain.activations(spec.decoder, rows, z_dim)
        kl_unused, log_q, nll, draw = chain.buffer(rows), chain.buffer(rows), chain.buffer(rows), chain.buffer(rows, 6)
        run([ops.repeat_rows(enc[-1], samples, q_rows),
             ops.repeat_rows(enc[0], samples, x_rows),
             ops.importance_noise(model.config.seed, 0, examples, first_sample, samples, z_dim, eps),
             ops.gaussian_posterior_forward(q_rows, counters, 0, 0, dec[0], kl_unused, eps=eps),
             ops.gaussian_posterior_log_q(q_rows, counters, 0, 0, log_q, eps=eps),
             *chain.forward(spec.decoder, dec),
             ops.bernoulli_nll(dec[-1], x_rows, 1.0, nll, draw)], backend)
        z = np.array(to_host(dec[0]))
        log_p = to_device(spec.prior.log_prob(z, {}).astype(np.float32), backend)   # prior: log p(z)
        run(ops.log_mean_exp_accumulate(nll, log_p, log_q, running_max, running_sum, samples), backend)
    log_px = to_device(np.full(examples, np.nan), backend)
    run(ops.log_mean_exp_finish(running_max, running_sum, k, log_px), backend)
    # The model computes log q in float64 and the kernels in float32 (|log q| ~ 5 here).
    np.testing.assert_allclose(to_host(log_px), model.log_likelihood(x, k), rtol=STEP_RTOL)
