"""The VampPrior (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018), and the NumPy twins
of kernels/vamp_prior.cu.

    p(z) = 1/K sum_k q(z | u_k),    u_k = hardtanh_[0,1](w_k) = min(max(w_k, 0), 1)

with K learnable pseudo-inputs w_k in data space, stored as ``prior.pseudo_inputs`` (K, D),
mapped through the SAME encoder as the data: q(z | u_k) = N(mu_k, diag(exp(lv_k))) with
[mu_k | lv_k] = encoder(u_k) (K, 2Z).  So p(z) is the mixture of cupyvae.distributions.
mixture with logits a = 0 (equal weights 1/K) and components c = encoder(u) -- the
Gaussian posterior's raw output on the pseudo-inputs, in its own [mu | logvar] layout.

Source (jmtomczak/vae_vampprior, the paper's code):
  * models/VAE.py, add_pseudoinputs: the pseudo-inputs are the weights of a bias-free
    linear layer applied to the identity, followed by nn.Hardtanh(min_val=0.0, max_val=1.0):
    u = hardtanh(w), the bound that keeps them in the [0, 1] range of the data.  We store w.
  * utils/load_data.py: random initialisation w ~ N(0.05, 0.01^2) (pseudoinputs_mean 0.05,
    pseudoinputs_std 0.01, the MNIST and Omniglot setting), or, with
    --use_training_data_init, w = K training examples + N(0, 0.01^2) noise
    (prior_init="data" here; the paper takes the first K of its shuffled training set, we
    draw K distinct examples with the model's seed).
  * models/VAE.py, log_p_z: log p(z) = LSE_k [log N(z; mu_k, lv_k) - log K] over the
    encoder's output on the pseudo-inputs; K = 500 in the paper's experiments.

Gradients (L the loss, g_b = dL / d log p(z_b); the mixture part is derived in mixture.py):
    dL/dc_k           = sum_b g_b d log p(z_b) / d c_k     (mixture.py: d/d m, d/d s; a is fixed)
    dL/du, dL/dW_enc  = the encoder's backward on the K pseudo-input rows, entered at dL/dc
                        (cupyvae.reference.mlp_backward); the encoder's weight gradient is the
                        SUM of this pass and the data pass
    dL/dw_kd          = dL/du_kd * [0 < w_kd < 1]          (hardtanh' : 1 inside, 0 outside,
                        as torch.nn.Hardtanh's backward)
A pseudo-input pixel at or beyond the bound gets no gradient and stays there (so with the
data initialisation, a pixel at 0 or 1 pushed outward by the noise stays at 0 or 1, as in
the paper's code).  The z-gradient is the mixture's, exactly as for `mog`.
"""
from __future__ import annotations

import numpy as np

from ..options import OptionError
from .base import POSTERIORS, PriorState, register_prior
from .mixture import GaussianMixturePrior


@register_prior("vamp")
class VampPrior(GaussianMixturePrior):
    """p(z) = 1/K sum_k q(z | hardtanh(w_k)); pseudo-inputs ``prior.pseudo_inputs`` (K, D).

    Needs a posterior whose raw output is [mu | logvar] (the Gaussian one): its value on a
    pseudo-input is a mixture component as it stands.  init "random": w ~ N(0.05, 0.01^2);
    "data": w = K distinct training examples + N(0, 0.01^2), set by the first `fit`, which
    refuses K larger than the training set.
    """
    kernel = "vamp_prior"
    default_components = 500
    init_schemes = ("random", "data")
    INIT_MEAN, INIT_STD = 0.05, 0.01       # utils/load_data.py: pseudoinputs_mean / _std
    DATA_INIT_STD = 0.01                   # utils/load_data.py, use_training_data_init

    def __init__(self, dim: int, components: int, data_dim: int, init: str = "random"):
        super().__init__(dim, components)
        self.data_dim = int(data_dim)
        self.init = init

    @classmethod
    def from_config(cls, config):
        posterior = POSTERIORS.get(config.posterior)
        if tuple(p.name for p in posterior.params) != ("mu", "logvar"):
            raise ValueError(f"prior 'vamp' mixes the posterior evaluated at its pseudo-inputs, so it "
                             f"needs a [mu | logvar] Gaussian posterior; posterior "
                             f"{config.posterior!r} has {[p.name for p in posterior.params]}")
        return cls(config.latent_dim, config.prior_components, config.data_dim, config.prior_init)

    def param_shapes(self):
        return {"pseudo_inputs": (self.n_components, self.data_dim)}

    def init_params(self, rng):
        return {"pseudo_inputs": rng.normal(self.INIT_MEAN, self.INIT_STD,
                                            (self.n_components, self.data_dim))}

    def check_training_set(self, n_examples, what="x_train"):
        if self.init == "data" and self.n_components > n_examples:
            raise OptionError("prior_components", self.n_components,
                              f"{{prior}} vamp with {{prior_init}} data copies one training example "
                              f"per pseudo-input, so it needs at least {self.n_components} training "
                              f"examples; {what} has {n_examples}", "model option")

    def init_from_data(self, x, rng):
        if self.init != "data":
            return {}
        self.check_training_set(len(x))
        rows = rng.choice(len(x), self.n_components, replace=False)
        noise = rng.normal(0.0, self.DATA_INIT_STD, (self.n_components, self.data_dim))
        return {"pseudo_inputs": x[rows].reshape(self.n_components, -1) + noise}

    def pseudo_inputs(self, params):
        return vamp_pseudo_inputs_forward(params["prior.pseudo_inputs"])

    def prepare(self, spec, params):
        from ..reference import mlp_forward   # here: reference imports spec, which imports us
        w = params["prior.pseudo_inputs"]
        acts = mlp_forward(spec.encoder, params, vamp_pseudo_inputs_forward(w))
        density = {"logits": np.zeros(self.n_components, w.dtype), "components": acts[-1]}
        return PriorState({"pseudo_inputs": w}, density, saved=acts)

    def add_param_grads(self, spec, params, grads, state, ddensity):
        from ..reference import mlp_backward
        # The pseudo-input pass writes its encoder gradients (with `=`) into scratch, then
        # they are ADDED to the data pass's.  The equal weights 1/K are not learned, so
        # ddensity["logits"] goes nowhere.
        encoder_grads = {name: np.zeros_like(grads[name]) for layer in spec.encoder
                         for name in (f"{layer.name}.weight", f"{layer.name}.bias")}
        du = mlp_backward(spec.encoder, params, encoder_grads, state.saved,
                          ddensity["components"], need_dx=True)
        grads["prior.pseudo_inputs"] += vamp_pseudo_inputs_backward(state["pseudo_inputs"], du)
        for name, value in encoder_grads.items():
            grads[name] += value


# ---------------------------------------------------------------------------------------
# Kernel-shaped twins of kernels/vamp_prior.cu (same arguments as the launch builders in
# cupyvae.cuda.ops.vamp_prior, outputs returned).
# ---------------------------------------------------------------------------------------

def vamp_pseudo_inputs_forward(w: np.ndarray) -> np.ndarray:
    """u = hardtanh(w) = min(max(w, 0), 1), any shape."""
    return np.clip(w, 0, 1)


def vamp_pseudo_inputs_backward(w: np.ndarray, du: np.ndarray) -> np.ndarray:
    """dw = du where 0 < w < 1, else 0 (hardtanh's derivative)."""
    return np.where((w > 0) & (w < 1), du, 0).astype(du.dtype, copy=False)
