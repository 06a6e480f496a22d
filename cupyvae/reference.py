"""The NumPy reference executor: the training objectives and their gradients, by hand.

For a batch x (B, D) and reparameterization noise eps (B, Z):
    q_raw      = encoder(x)
    z          = posterior.rsample(q_raw, eps)
    p_raw      = decoder(z)
    loss       = 1/B sum_b [ nll(x_b | p_raw_b) + beta KL_b ]
with KL_b the registered closed form, or else the one-sample estimate
log q(z_b|x_b) - log p(z_b), and beta the KL weight (kl_weight; 1 is the ELBO).  Backward,
with every upstream gradient scaled by 1/B:
    d p_raw    = likelihood.nll gradient
    dz         = decoder backward (d p_raw)
    closed-form KL:  d q_raw = rsample_backward(dz) + beta dKL/d q_raw
    Monte-Carlo KL:  dz += -beta dlog p/dz,
                     d q_raw = rsample_backward(dz) + beta d log q(rsample(q_raw, eps)) / d q_raw
                     (the total derivative at fixed eps: Posterior.log_prob_of_draw_grad),
                     d prior params = -beta dlog p/d params  (added after the encoder's pass:
                     see "the prior pass" below)
    encoder backward (d q_raw)   (no dx for the first layer: the data are not trained)
Free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
Flow", eq. 15) replace the KL term by sum_j max(lambda, (1/B) sum_b KL_bj) for a pair
whose KL factorises per latent dimension (registered with register_kl_per_dimension);
dimension j's KL then gets gradient beta/B where its batch mean exceeds lambda, else none.
The IWAE bound (Burda, Grosse & Salakhutdinov 2016) with k samples per example runs the
decoder on B*k rows (row b*k + i: sample i of example b); see iwae_loss_and_grads.
This module is the oracle for every kernel; it works in any float dtype, so the tests can
run it in float64 against central finite differences.
"""
from __future__ import annotations

import numpy as np

from .layers import linear_backward, linear_forward
from .options import OptionError
from .objective_twins import free_bits_kl, iwae_weights, repeat_rows, scale_rows, sum_row_groups
from .spec import LayerSpec, ModelSpec


def mlp_forward(layers: tuple[LayerSpec, ...], params: dict, x: np.ndarray) -> list[np.ndarray]:
    """Every layer's output, input first: [x, h1, ..., out]."""
    acts = [x]
    for layer in layers:
        acts.append(linear_forward(acts[-1], params[f"{layer.name}.weight"],
                                   params[f"{layer.name}.bias"], layer.activation))
    return acts


def mlp_backward(layers: tuple[LayerSpec, ...], params: dict, grads: dict,
                 acts: list[np.ndarray], dout: np.ndarray, need_dx: bool) -> np.ndarray | None:
    """Writes every layer's dW, db into `grads` (with `=`); returns d input if asked."""
    dy = dout
    for i in reversed(range(len(layers))):
        layer = layers[i]
        dy = linear_backward(acts[i], params[f"{layer.name}.weight"], acts[i + 1], dy,
                             layer.activation, grads[f"{layer.name}.weight"],
                             grads[f"{layer.name}.bias"], need_dx=need_dx or i > 0)
    return dy


def encode_raw(spec: ModelSpec, params: dict, x: np.ndarray) -> np.ndarray:
    return mlp_forward(spec.encoder, params, x)[-1]


def decode_raw(spec: ModelSpec, params: dict, z: np.ndarray) -> np.ndarray:
    return mlp_forward(spec.decoder, params, z)[-1]


def negative_elbo_rows(spec: ModelSpec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Per-example negative ELBO (B,) from one reparameterized sample each."""
    q_raw = encode_raw(spec, params, x)
    z = spec.posterior.rsample(q_raw, eps)
    nll = -spec.likelihood.log_prob(decode_raw(spec, params, z), x)
    return nll + kl_rows(spec, params, q_raw, eps)


def kl_rows(spec: ModelSpec, params: dict, q_raw: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """KL(q(z|x_b) || p(z)) per row (B,): the closed form where the pair has one, else the
    one-sample estimate log q(z_b|x_b) - log p(z_b) at z_b = rsample(q_raw_b, eps_b)."""
    if spec.analytic_kl is not None:
        return spec.analytic_kl(q_raw)[0]
    z = spec.posterior.rsample(q_raw, eps)
    return spec.posterior.log_prob_of_draw(q_raw, eps) - prior_log_prob(spec, params, z)[0]


# ---------------------------------------------------------------------------------------------
# The prior pass: the one seam through which every objective reaches log p(z).  A prior whose
# density depends on more than its own tensors (the VampPrior encodes pseudo-inputs) does that
# extra work inside these functions (through Prior.prepare / Prior.add_param_grads), so no
# objective needs to know.  Backward is split in
# two because d/dz is needed before the encoder's data pass writes its gradients (with `=`),
# while a prior's parameter gradients may flow into the encoder too and so are ADDED after it.
# ---------------------------------------------------------------------------------------------

def prior_state(spec: ModelSpec, params: dict):
    """The prior's forward work that does not depend on z (a PriorState, see
    cupyvae.distributions.base.Prior): for the VampPrior, encoding its pseudo-inputs."""
    return spec.prior.prepare(spec, params)


def prior_log_prob(spec: ModelSpec, params: dict, z: np.ndarray) -> tuple[np.ndarray, dict]:
    """(log p(z) per row (B,), the prior's state, passed on to the backward calls).

    The state is a dict of the prior's own tensors (iterating it names the prior's gradients)
    that also carries what the density reads and what its backward reuses."""
    state = prior_state(spec, params)
    return spec.prior.log_prob(z, state.density), state


def prior_log_prob_dz(spec: ModelSpec, z: np.ndarray, prior_params: dict,
                      g: np.ndarray) -> np.ndarray:
    """d/dz of sum_b g[b] log p(z_b): (B, Z); g (B,) is d loss / d log p(z_b)."""
    return g[:, None] * spec.prior.log_prob_grads(z, prior_params.density, g)[0]


def add_prior_param_grads(spec: ModelSpec, params: dict, grads: dict, z: np.ndarray,
                          prior_params: dict, g: np.ndarray) -> None:
    """ADDS (`+=`) d/d theta of sum_b g[b] log p(z_b) for every parameter theta the prior
    depends on: its own tensors and, for the VampPrior, the encoder's weights and biases.
    Called after the encoder's data pass has written its gradients."""
    ddensity = spec.prior.log_prob_grads(z, prior_params.density, g)[1]
    spec.prior.add_param_grads(spec, params, grads, prior_params, ddensity)


def negative_elbo_and_grads(spec: ModelSpec, params: dict, grads: dict,
                            x: np.ndarray, eps: np.ndarray, kl_weight=1.0, free_bits=0.0,
                            terms: dict | None = None) -> float:
    """Mean over the batch of nll + kl_weight * KL (the negative ELBO for kl_weight 1, the
    beta-VAE objective otherwise); writes d loss / d param into `grads` with `=`.

    x (B, D), eps (B, Z).  kl_weight (beta) >= 0 multiplies the KL term and its gradient.
    free_bits = lambda > 0 (nats per latent dimension) replaces the KL term by
    sum_j max(lambda, (1/B) sum_b KL_bj) (see the top); it needs a pair registered with
    register_kl_per_dimension, else ValueError naming the posterior and the prior.
    `terms`, if given, receives the batch means of the two ELBO terms (float64 sums, nats
    per example): "recon" (the reconstruction term, sum_b nll_b / B) and "kl" (sum_b KL_b / B,
    neither weighted nor floored).
    """
    batch = x.shape[0]
    scale = 1.0 / batch
    kl_scale = kl_weight * scale
    per_dimension = kl_per_dimension_for_free_bits(spec, free_bits) if free_bits > 0 else None
    enc_acts = mlp_forward(spec.encoder, params, x)
    q_raw = enc_acts[-1]
    z = spec.posterior.rsample(q_raw, eps)
    dec_acts = mlp_forward(spec.decoder, params, z)
    nll, dp_raw = spec.likelihood.nll(dec_acts[-1], x, scale)
    dz = mlp_backward(spec.decoder, params, grads, dec_acts, dp_raw, need_dx=True)

    if per_dimension is not None:
        kl_dim, dkl = per_dimension(q_raw)
        kl = kl_dim.sum(axis=1)
        kl_objective, active, _ = free_bits_kl(kl_dim, free_bits)
        dq_raw = spec.posterior.rsample_backward(q_raw, eps, dz)
        dq_raw += kl_scale * dkl * np.tile(active, dkl.shape[1] // active.shape[0])
        mlp_backward(spec.encoder, params, grads, enc_acts, dq_raw, need_dx=False)
    elif spec.analytic_kl is not None:
        kl, dkl = spec.analytic_kl(q_raw)
        kl_objective = kl
        dq_raw = spec.posterior.rsample_backward(q_raw, eps, dz)
        dq_raw += kl_scale * dkl
        mlp_backward(spec.encoder, params, grads, enc_acts, dq_raw, need_dx=False)
    else:
        log_p, prior_params = prior_log_prob(spec, params, z)
        kl = spec.posterior.log_prob_of_draw(q_raw, eps) - log_p
        kl_objective = kl
        g_q = np.full(batch, kl_scale, dtype=z.dtype)    # d loss / d log q(z_b) = -d loss / d log p(z_b)
        _monte_carlo_backward(spec, params, grads, enc_acts, q_raw, eps, z, dz, prior_params, g_q)
    if terms is not None:
        terms.update(recon=_batch_mean(nll), kl=_batch_mean(kl))
    return float(_batch_mean(nll) + kl_weight * _batch_mean(kl_objective))


def iwae_rows(spec: ModelSpec, params: dict, x: np.ndarray, eps: np.ndarray, samples: int) -> np.ndarray:
    """Per-example negative IWAE bound (B,): -log (1/k) sum_i p(x_b, z_bi) / q(z_bi|x_b)
    with z_bi = rsample(q_raw_b, eps[b*k + i]); eps (B*k, Z)."""
    q_rows = repeat_rows(encode_raw(spec, params, x), samples)
    z = spec.posterior.rsample(q_rows, eps)
    nll, _ = spec.likelihood.nll(decode_raw(spec, params, z), repeat_rows(x, samples), 1.0)
    log_q = spec.posterior.log_prob_of_draw(q_rows, eps)
    log_p = prior_log_prob(spec, params, z)[0]
    return iwae_weights(nll, log_p, log_q, samples, 1.0)[0]


def iwae_loss_and_grads(spec: ModelSpec, params: dict, grads: dict, x: np.ndarray,
                        eps: np.ndarray, samples: int, terms: dict | None = None) -> float:
    """Mean over the batch of the negative IWAE bound (Burda, Grosse & Salakhutdinov 2016,
    eq. 8) with k = `samples`; writes d loss / d param into `grads` with `=`.

    x (B, D), eps (B*k, Z): row b*k + i is sample i of example b (the training noise is
    cupyvae.philox.normal(seed, step, B*k, Z, STREAM_POSTERIOR), so k = 1 draws the ELBO's).
    Forward: the encoder runs on B rows, q_raw is repeated to B*k rows, the decoder runs on
    B*k rows; log w_r = log p(z_r) - log q(z_r|x) - nll_r, with log q from the noise.
    Backward (eq. 14): with w~_r the normalised importance weight of row r among its
    example's k (objective_twins.iwae_weights, a stable log-sum-exp), every per-sample
    term gets g_r = w~_r / B: d loss / d nll_r = g_r, d loss / d log q_r = g_r,
    d loss / d log p_r = -g_r; the B*k rows of d q_raw are summed back per example.
    With k = 1, g = 1/B and this is exactly the negative ELBO with a Monte-Carlo KL.
    `terms` receives "recon" (mean of nll_r) and "kl" (mean of log q_r - log p_r) over the
    B*k rows: the ELBO's two terms, estimated with k samples.
    """
    batch = x.shape[0]
    enc_acts = mlp_forward(spec.encoder, params, x)
    q_rows = repeat_rows(enc_acts[-1], samples)
    z = spec.posterior.rsample(q_rows, eps)
    dec_acts = mlp_forward(spec.decoder, params, z)
    nll, dp_raw = spec.likelihood.nll(dec_acts[-1], repeat_rows(x, samples), 1.0)
    log_q = spec.posterior.log_prob_of_draw(q_rows, eps)
    log_p, prior_params = prior_log_prob(spec, params, z)
    bound, g = iwae_weights(nll, log_p, log_q, samples, 1.0 / batch)
    dz = mlp_backward(spec.decoder, params, grads, dec_acts, scale_rows(dp_raw, g), need_dx=True)
    _monte_carlo_backward(spec, params, grads, enc_acts, q_rows, eps, z, dz, prior_params, g,
                          samples)
    if terms is not None:
        terms.update(recon=_batch_mean(nll), kl=_batch_mean(log_q - log_p))
    return float(_batch_mean(bound))


def _monte_carlo_backward(spec, params, grads, enc_acts, q_rows, eps, z, dz, prior_params,
                          g_q, samples: int = 1) -> None:
    """From dz (the decoder's d loss / dz) through the sampled log q - log p terms to every
    encoder and prior gradient.  g_q (rows,) = d loss / d log q(z_r) = -d loss / d log p(z_r);
    q_rows holds each example's q_raw repeated `samples` times (row b*k + i)."""
    g_p = -g_q
    dz = dz + prior_log_prob_dz(spec, z, prior_params, g_p)
    dq_rows = spec.posterior.rsample_backward(q_rows, eps, dz)
    dq_rows += g_q[:, None] * spec.posterior.log_prob_of_draw_grad(q_rows, eps)
    dq_raw = dq_rows if samples == 1 else sum_row_groups(dq_rows, samples)
    mlp_backward(spec.encoder, params, grads, enc_acts, dq_raw, need_dx=False)
    for name in prior_params:
        grads[f"prior.{name}"][...] = 0
    add_prior_param_grads(spec, params, grads, z, prior_params, g_p)


def kl_per_dimension_for_free_bits(spec: ModelSpec, free_bits: float):
    """The pair's per-dimension KL, or OptionError (a ValueError) naming the pair (free bits
    needs it); the one check of the reference and of the ELBO objective
    (objectives.Elbo.check_model)."""
    if spec.kl_per_dimension is None:
        raise OptionError(
            "free_bits", free_bits,
            f"free bits need a KL that factorises per latent dimension; {{posterior}} "
            f"{spec.config.posterior} with {{prior}} {spec.config.prior} has none (only "
            "closed-form pairs registered with register_kl_per_dimension, e.g. gaussian "
            "with normal); leave {free_bits} at 0", "training option")
    return spec.kl_per_dimension


def _batch_mean(rows: np.ndarray) -> float:
    """The mean of per-row values, accumulated in float64."""
    return float(np.sum(rows, dtype=np.float64) / len(rows))
