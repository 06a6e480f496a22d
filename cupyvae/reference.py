"""The NumPy reference executor: the negative ELBO and its gradient, by hand.

For a batch x (B, D) and reparameterization noise eps (B, Z):
    q_raw      = encoder(x)
    z          = posterior.rsample(q_raw, eps)
    p_raw      = decoder(z)
    loss       = 1/B sum_b [ nll(x_b | p_raw_b) + KL_b ]
with KL_b the registered closed form, or else the one-sample estimate
log q(z_b|x_b) - log p(z_b).  Backward, with every upstream gradient scaled by 1/B:
    d p_raw    = likelihood.nll gradient
    dz         = decoder backward (d p_raw)
    closed-form KL:  d q_raw = rsample_backward(dz) + dKL/d q_raw
    Monte-Carlo KL:  dz += dlog q/dz - dlog p/dz,
                     d q_raw = rsample_backward(dz) + dlog q/d q_raw |_z,
                     d prior params = -dlog p/d params  (added after the encoder's pass:
                     see "the prior pass" below)
    encoder backward (d q_raw)   (no dx for the first layer: the data are not trained)
This module is the oracle for every kernel; it works in any float dtype, so the tests can
run it in float64 against central finite differences.
"""
from __future__ import annotations

import numpy as np

from .layers import linear_backward, linear_forward
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
    return nll + _kl_rows(spec, params, q_raw, z)


def _kl_rows(spec, params, q_raw, z):
    if spec.analytic_kl is not None:
        return spec.analytic_kl(q_raw)[0]
    return spec.posterior.log_prob(q_raw, z) - prior_log_prob(spec, params, z)[0]


# ---------------------------------------------------------------------------------------------
# The prior pass: the one seam through which every objective reaches log p(z).  A prior whose
# density depends on more than its own tensors (the VampPrior encodes pseudo-inputs) does that
# extra work inside these two functions, so no objective needs to know.  Backward is split in
# two because d/dz is needed before the encoder's data pass writes its gradients (with `=`),
# while a prior's parameter gradients may flow into the encoder too and so are ADDED after it.
# ---------------------------------------------------------------------------------------------

def prior_log_prob(spec: ModelSpec, params: dict, z: np.ndarray) -> tuple[np.ndarray, dict]:
    """(log p(z) per row (B,), the prior's parameters, passed on to the backward calls)."""
    prior_params = spec.prior_params(params)
    return spec.prior.log_prob(z, prior_params), prior_params


def prior_log_prob_dz(spec: ModelSpec, z: np.ndarray, prior_params: dict,
                      g: np.ndarray) -> np.ndarray:
    """d/dz of sum_b g[b] log p(z_b): (B, Z); g (B,) is d loss / d log p(z_b)."""
    return g[:, None] * spec.prior.log_prob_grads(z, prior_params, g)[0]


def add_prior_param_grads(spec: ModelSpec, params: dict, grads: dict, z: np.ndarray,
                          prior_params: dict, g: np.ndarray) -> None:
    """ADDS (`+=`) d/d theta of sum_b g[b] log p(z_b) for every prior parameter theta.
    Called after the encoder's data pass has written its gradients."""
    for name, value in spec.prior.log_prob_grads(z, prior_params, g)[1].items():
        grads[f"prior.{name}"] += value


def negative_elbo_and_grads(spec: ModelSpec, params: dict, grads: dict,
                            x: np.ndarray, eps: np.ndarray) -> float:
    """Mean negative ELBO over the batch; writes d loss / d param into `grads` with `=`."""
    batch = x.shape[0]
    scale = 1.0 / batch
    enc_acts = mlp_forward(spec.encoder, params, x)
    q_raw = enc_acts[-1]
    z = spec.posterior.rsample(q_raw, eps)
    dec_acts = mlp_forward(spec.decoder, params, z)
    nll, dp_raw = spec.likelihood.nll(dec_acts[-1], x, scale)
    dz = mlp_backward(spec.decoder, params, grads, dec_acts, dp_raw, need_dx=True)

    if spec.analytic_kl is not None:
        kl, dkl = spec.analytic_kl(q_raw)
        dq_raw = spec.posterior.rsample_backward(q_raw, eps, dz)
        dq_raw += scale * dkl
        mlp_backward(spec.encoder, params, grads, enc_acts, dq_raw, need_dx=False)
    else:
        log_q = spec.posterior.log_prob(q_raw, z)
        log_p, prior_params = prior_log_prob(spec, params, z)
        kl = log_q - log_p
        dlogq_raw, dlogq_z = spec.posterior.log_prob_grads(q_raw, z)
        g = np.full(batch, -scale, dtype=z.dtype)       # d loss / d log p(z_b)
        dz = dz + scale * dlogq_z + prior_log_prob_dz(spec, z, prior_params, g)
        dq_raw = spec.posterior.rsample_backward(q_raw, eps, dz)
        dq_raw += scale * dlogq_raw
        mlp_backward(spec.encoder, params, grads, enc_acts, dq_raw, need_dx=False)
        for name in prior_params:
            grads[f"prior.{name}"][...] = 0
        add_prior_param_grads(spec, params, grads, z, prior_params, g)
    return float((nll + kl).sum() * scale)
