"""Plan fragments: each model component's part of the kernel step plan.

The kernel executor (cupyvae.cuda.executor) composes a training step, an inference pass and
the importance-sampled log-likelihood from fragments, and never names a distribution or an
objective: each component's fragment is found in a registry under the very name the
component is registered with (cupyvae.distributions, cupyvae.objectives).

    POSTERIOR_FRAGMENTS[posterior]      q(z|x): the reparameterized draw z, log q(z|x) at the
                                        draw (from the noise), and the backward of both
    PRIOR_FRAGMENTS[prior]              p(z): log p(z), its backward into z and into the
                                        prior's parameters, and the prior's own pass
    KL_FRAGMENTS[kl_key(posterior, prior)]
                                        a closed-form KL pair: the draw and the KL in one
                                        launch, their backward, and the KL per latent
                                        dimension where it factorises (free bits)
    OBJECTIVE_FRAGMENTS[objective]      the training objective: rows of z per example, the
                                        per-row weights, the loss rows and the ELBO's terms

A fragment is built for one plan, over that plan's Workspace (its buffers, each named
'<role>.<what>'), and returns lists of launches (cupyvae.cuda.launch) from small methods;
it allocates while it is built, never while its launches run, so a plan of fragments is
one CUDA graph like any other.  The ELBO's KL is a closed-form pair's when the NumPy path
has one (ModelSpec.analytic_kl), else the one-sample estimate log q - log p composed from
the posterior's and the prior's fragments (MonteCarloKl) -- the rule of
cupyvae.reference.kl_rows.

The training step (KernelExecutor), with StepIO the buffers the fragments share:

    gather_rows, schedule_step                    x = io.x (the batch), sched
    prior.in_step                                 VampPrior: its K pseudo-inputs below the batch
    encoder forward                               rows B (+ K): io.q = q(z|x)'s raw parameters
    objective.forward                             z (R = B * samples rows), the KL / log q / log p
    decoder forward, likelihood nll               io.nll, io.dp (scaled by likelihood_scale)
    objective.weigh                               per-row weights (IWAE: from the nll)
    decoder backward                              io.dz
    objective.backward                            io.dq and the prior's parameter gradients
    encoder backward                              (+ d input for the pseudo-inputs)
    prior.after_encoder_backward                  VampPrior: d pseudo-inputs
    clipping, adam_update, step_terms, end_step   objective.term_rows, objective.loss_rows

What each fragment launches:

    gaussian posterior      sample: gaussian_posterior_forward (its closed-form KL output
                            unused); log_q: gaussian_posterior_log_q; weighted_backward:
                            gaussian_posterior_weighted_backward; draw (inference, the step
                            a launch argument): gaussian_posterior_sample
    gaussian -> normal KL   forward: gaussian_posterior_forward; backward:
                            gaussian_posterior_backward; per dimension:
                            gaussian_posterior_kl_per_dimension(_backward)
    Monte-Carlo KL          forward: sample, log_q, prior.log_prob, monte_carlo_kl;
                            backward: monte_carlo_kl_weights (g_q = beta / B, g_p = -g_q),
                            prior.backward_z, weighted_backward, prior.backward_params
    normal prior            the one-component mixture N(0, I) on mixture_prior.cu (exact:
                            its responsibility is exp(0) = 1 and d log p / dz = -z); no
                            parameters; draws: normal_prior_sample
    mog prior               mixture_prior_forward / _backward_z / _backward_params over
                            prior.logits and prior.components
    vamp prior              in_step: vamp_pseudo_inputs_forward into the encoder's input rows
                            below the batch, so ONE encoder launch per layer encodes both and
                            ONE linear_backward per layer writes the sum of both passes'
                            weight gradients; the mixture kernels with logits 0 and the
                            encoder's output rows as components; after the encoder backward:
                            vamp_pseudo_inputs_backward.  Inference: its own encoder pass
                            over the K pseudo-inputs, once per call
    elbo                    forward: kl.forward; backward: kl.backward with kl_scale 1/B and
                            the device KL weight.  Free bits: kl.per_dimension, free_bits_kl
                            forward; kl.backward with kl_scale 0 (the reparameterization
                            only), scaled_by (beta active_j), kl.per_dimension_backward
    iwae (k samples)        forward: repeat_rows (q and x to B*k rows), sample (Philox row
                            b*k + i), log_q, prior.log_prob; weigh: iwae_weights, scale_rows,
                            negated, monte_carlo_kl; backward: prior.backward_z,
                            weighted_backward, sum_row_groups, prior.backward_params
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..distributions import kl_key
from ..registry import Registry
from . import ops

POSTERIOR_FRAGMENTS: Registry[type["PosteriorFragment"]] = Registry("posterior kernel fragment")
PRIOR_FRAGMENTS: Registry[type["PriorFragment"]] = Registry("prior kernel fragment")
KL_FRAGMENTS: Registry[type["KlFragment"]] = Registry("closed-form KL kernel fragment")
OBJECTIVE_FRAGMENTS: Registry[type["ObjectiveFragment"]] = Registry("objective kernel fragment")


# ------------------------------------------------------------------------------ plumbing
class Workspace:
    """The device buffers of one plan (or of the inference calls), by name.

    array(name, shape) allocates a zero-filled buffer the first time, and afterwards returns
    it -- or, for fewer rows, a view of its leading rows (contiguous: rows are the leading
    axis), so the chunks of an inference call share one buffer.  A request with more rows,
    other trailing dimensions or another dtype allocates a new buffer under the name; a
    launch keeps the arrays it was built with, so that never changes a built launch, and
    launches that hand a buffer on ask for it with the same shape."""

    def __init__(self, xp):
        self.xp = xp
        self.buffers: dict[str, object] = {}

    def array(self, name: str, shape: tuple, dtype=np.float32):
        shape = tuple(int(extent) for extent in shape)
        buffer = self.buffers.get(name)
        if (buffer is None or buffer.dtype != dtype or buffer.shape[1:] != shape[1:]
                or buffer.shape[0] < shape[0]):
            buffer = self.xp.zeros(shape, dtype)
            self.buffers[name] = buffer
        return buffer if buffer.shape[0] == shape[0] else buffer[:shape[0]]


@dataclass(frozen=True)
class Noise:
    """Where a posterior draw's standard normals come from: Philox keyed by (seed,
    counters[0], row, column, stream), or, when `eps` is given, that (rows, Z) array."""
    counters: object
    seed: int
    stream: int
    eps: object = None


class Network:
    """The encoder's and decoder's launches over the executor's parameters and gradients."""

    def __init__(self, spec, params: dict, grads: dict, ws: Workspace, linear_workspace):
        self.spec, self.params, self.grads, self.ws = spec, params, grads, ws
        self.linear_workspace = linear_workspace       # the GEMMs' split-K partials

    def activations(self, name: str, layers, rows: int, inputs=None) -> list:
        """[inputs, h1, ..., out] for `rows` rows: workspace buffers '<name>.<i>' (the
        input too, unless given)."""
        first = inputs if inputs is not None else self.ws.array(f"{name}.0", (rows, layers[0].n_in))
        return [first] + [self.ws.array(f"{name}.{i + 1}", (rows, layer.n_out))
                          for i, layer in enumerate(layers)]

    def gradients(self, name: str, acts: list) -> list:
        """d loss / d pre-activation of every layer output (index like acts; None at the
        input, whose gradient goes wherever backward's input_grad says)."""
        return [None] + [self.ws.array(f"{name}.grad.{i}", a.shape) for i, a in enumerate(acts)
                         if i > 0]

    def forward(self, layers, acts) -> list:
        return [ops.linear_forward(acts[i], self.params[f"{layer.name}.weight"],
                                   self.params[f"{layer.name}.bias"], layer.activation, acts[i + 1],
                                   workspace=self.linear_workspace)
                for i, layer in enumerate(layers)]

    def backward(self, layers, acts, grads, input_grad) -> list:
        """grads[i + 1] holds d loss / d pre-activation of layer i's output on entry; writes
        every dW, db (with `=`, over all rows) and grads[i] downwards, one fused launch per
        layer; `input_grad` receives d input (None: no d x for the first layer)."""
        launches = []
        for i in reversed(range(len(layers))):
            layer = layers[i]
            below = layers[i - 1].activation if i > 0 else "identity"
            launches.append(ops.linear_backward(
                acts[i], self.params[f"{layer.name}.weight"], grads[i + 1], below,
                self.grads[f"{layer.name}.weight"], self.grads[f"{layer.name}.bias"],
                grads[i] if i > 0 else input_grad, workspace=self.linear_workspace))
        return launches


@dataclass
class StepIO:
    """The buffers fragments hand each other in one pass (R = batch * objective.samples):
    x (B, D) the examples; q (B, Q) the encoder's output for them; z (R, Z) the decoder's
    input; nll (R,) and dp (R, P) the likelihood's rows and d loss / d p_raw; dz (R, Z)
    d loss / dz from the decoder and dq (B, Q) d loss / dq (training only)."""
    batch: int
    x: object
    q: object
    z: object
    nll: object
    dp: object
    noise: Noise
    kl_weight: object              # (1,) float32 device scalar: this step's KL weight
    dz: object = None
    dq: object = None


def _rows(name: str, ws: Workspace, rows: int, *cols: int):
    return ws.array(name, (rows, *cols))


# ------------------------------------------------------------------------------ posteriors
class PosteriorFragment:
    """q(z|x)'s launches; q (rows, Q) holds its raw parameters, one row per draw."""

    def __init__(self, posterior, ws: Workspace):
        self.posterior, self.ws = posterior, ws

    def sample(self, q, noise: Noise, z) -> list:
        """z (rows, Z) = the reparameterized draw, `=`."""
        raise NotImplementedError

    def log_q(self, q, noise: Noise, log_q) -> list:
        """log_q (rows,) = log q(z|x) at the draw, computed from the noise, `=`."""
        raise NotImplementedError

    def weighted_backward(self, q, dz, g, noise: Noise, dq) -> list:
        """dq (rows, Q) = d/dq of (the loss through z, given dz) + g[r] log q_r, `=`."""
        raise NotImplementedError

    def draw(self, q, seed: int, step: int, stream: int, z) -> list:
        """z = a draw keyed by the launch argument `step` (inference), `=`."""
        raise NotImplementedError


@POSTERIOR_FRAGMENTS.register("gaussian")
class GaussianPosteriorFragment(PosteriorFragment):
    def sample(self, q, noise, z):
        unused = _rows("posterior.closed_form_kl", self.ws, q.shape[0])
        return [ops.gaussian_posterior_forward(q, noise.counters, noise.seed, noise.stream, z,
                                               unused, eps=noise.eps)]

    def log_q(self, q, noise, log_q):
        return [ops.gaussian_posterior_log_q(q, noise.counters, noise.seed, noise.stream, log_q,
                                             eps=noise.eps)]

    def weighted_backward(self, q, dz, g, noise, dq):
        return [ops.gaussian_posterior_weighted_backward(q, dz, g, noise.counters, noise.seed,
                                                         noise.stream, dq, eps=noise.eps)]

    def draw(self, q, seed, step, stream, z):
        return [ops.gaussian_posterior_sample(q, seed, step, stream, z)]


# ------------------------------------------------------------------------------ KL estimates
class KlFragment:
    """KL(q(z|x) || p(z)) per row with the draw z: forward and backward."""

    def forward(self, q, noise: Noise, z, kl) -> list:
        """z (B, Z) = the draw, kl (B,) = the KL per row, both `=`."""
        raise NotImplementedError

    def backward(self, q, z, dz, noise: Noise, kl_scale: float, kl_weight, dq) -> list:
        """dq (B, Q) = d/dq of (the loss through z, given dz) + k sum_b kl_b with
        k = kl_scale * kl_weight[0] (kl_weight: the device scalar), `=`; a prior with
        parameters gets its gradient of the same k-weighted KL here too."""
        raise NotImplementedError


@KL_FRAGMENTS.register(kl_key("gaussian", "normal"))
class GaussianNormalKl(KlFragment):
    """The closed form KL(N(mu, e^lv) || N(0, I)); it factorises per latent dimension."""

    def __init__(self, ws: Workspace):
        del ws     # every closed-form KL fragment is built with the workspace; this one needs none

    def forward(self, q, noise, z, kl):
        return [ops.gaussian_posterior_forward(q, noise.counters, noise.seed, noise.stream, z, kl,
                                               eps=noise.eps)]

    def backward(self, q, z, dz, noise, kl_scale, kl_weight, dq):
        return [ops.gaussian_posterior_backward(q, dz, noise.counters, noise.seed, noise.stream,
                                                kl_scale, kl_weight, dq, eps=noise.eps)]

    def per_dimension(self, q, kl_dim) -> list:
        """kl_dim (B, Z) = the KL of each latent dimension, `=`."""
        return [ops.gaussian_posterior_kl_per_dimension(q, kl_dim)]

    def per_dimension_backward(self, q, weight, kl_scale: float, dq) -> list:
        """dq += kl_scale * weight[j] * d KL_bj / dq (ADDS); weight (Z,)."""
        return [ops.gaussian_posterior_kl_per_dimension_backward(q, weight, kl_scale, dq)]


class MonteCarloKl(KlFragment):
    """The one-sample estimate log q(z|x) - log p(z) at the reparameterized draw
    (cupyvae.reference: negative_elbo_and_grads, _monte_carlo_backward)."""

    def __init__(self, posterior: PosteriorFragment, prior: "PriorFragment", ws: Workspace):
        self.posterior, self.prior, self.ws = posterior, prior, ws

    def forward(self, q, noise, z, kl):
        rows = q.shape[0]
        log_q, log_p = _rows("kl.log_q", self.ws, rows), _rows("kl.log_p", self.ws, rows)
        return [*self.posterior.sample(q, noise, z),
                *self.posterior.log_q(q, noise, log_q),
                *self.prior.log_prob(z, log_p),
                ops.monte_carlo_kl(log_q, log_p, kl)]

    def backward(self, q, z, dz, noise, kl_scale, kl_weight, dq):
        rows = q.shape[0]
        g_q, g_p = _rows("kl.g_q", self.ws, rows), _rows("kl.g_p", self.ws, rows)
        return [ops.monte_carlo_kl_weights(kl_weight, kl_scale, g_q, g_p),
                *self.prior.backward_z(z, g_p, dz),
                *self.posterior.weighted_backward(q, dz, g_q, noise, dq),
                *self.prior.backward_params(z, g_p)]


# ------------------------------------------------------------------------------ priors
class PriorFragment:
    """p(z)'s launches.  This base class is also the stand-in for a prior without a kernel
    fragment: it adds nothing to a step (enough for a closed-form KL pair) and refuses
    log p(z).  `encoder_rows`: rows the prior encodes below the batch in a training step."""
    encoder_rows: ClassVar[int] = 0

    def __init__(self, prior, net: Network):
        self.prior, self.net, self.ws = prior, net, net.ws

    def in_step(self, enc, enc_grad, batch: int) -> list:
        """Training: launches before the encoder, which runs on enc (batch +
        encoder_rows rows; the batch first) and whose gradients go to enc_grad."""
        return []

    def prepared(self) -> list:
        """Inference: launches computing the density's tensors, once per call."""
        return []

    def log_prob(self, z, log_p) -> list:
        """log_p (rows,) = log p(z), `=`."""
        raise ValueError(f"prior {self.prior.name!r} has no kernel fragment for log p(z) "
                         "(cupyvae.cuda.fragments.PRIOR_FRAGMENTS)")

    def backward_z(self, z, g, dz) -> list:
        """dz (rows, Z) += g[r] d log p(z_r) / dz_r (ADDS)."""
        raise NotImplementedError

    def backward_params(self, z, g) -> list:
        """The gradient of sum_r g[r] log p(z_r) wrt the prior's parameters, `=` (before the
        encoder's backward: the VampPrior's flows through it)."""
        return []

    def encoder_input_grad(self):
        """Where the encoder's backward writes d input (None: nowhere)."""
        return None

    def after_encoder_backward(self) -> list:
        return []

    def sample(self, z, seed: int) -> list | None:
        """z (n, Z) = draws keyed as cupyvae.executors.prior_draws keys them, or None: the
        executor draws on the host."""
        return None


class MixturePriorFragment(PriorFragment):
    """A prior whose density is a mixture of diagonal Gaussians (kernels/mixture_prior.cu):
    log-weights `logits` (K,) and `components` (K, 2Z) = [means | log-variances] on the
    device; gradients into `dlogits` and `dcomponents` (None: the prior learns nothing)."""
    logits = components = dlogits = dcomponents = None

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def _resp(self, rows: int):
        return _rows("prior.resp", self.ws, rows, self.k)

    def log_prob(self, z, log_p):
        return [ops.mixture_prior_forward(z, self.logits, self.components, log_p,
                                          self._resp(z.shape[0]))]

    def backward_z(self, z, g, dz):
        return [ops.mixture_prior_backward_z(z, self.components, self._resp(z.shape[0]), g, dz)]

    def backward_params(self, z, g):
        if self.dcomponents is None:
            return []
        return [ops.mixture_prior_backward_params(z, self.logits, self.components,
                                                  self._resp(z.shape[0]), g, self.dlogits,
                                                  self.dcomponents)]


@PRIOR_FRAGMENTS.register("normal")
class NormalPriorFragment(MixturePriorFragment):
    """N(0, I) as the mixture of one component with mean 0 and log-variance 0: the kernel's
    log p is -1/2 sum_j (log 2pi + z_j^2) (its log-softmax and log-sum-exp of one term are
    exactly 0), its responsibility exp(0) = 1, so d log p / dz = -z exactly."""

    def __init__(self, prior, net):
        super().__init__(prior, net)
        self.logits = self.ws.array("prior.logits", (1,))
        self.components = self.ws.array("prior.components", (1, 2 * prior.dim))

    def sample(self, z, seed):
        return [ops.normal_prior_sample(z, seed)]


@PRIOR_FRAGMENTS.register("mog")
class LearnedMixturePriorFragment(MixturePriorFragment):
    """prior.logits and prior.components, learned."""

    def __init__(self, prior, net):
        super().__init__(prior, net)
        self.logits, self.components = net.params["prior.logits"], net.params["prior.components"]
        self.dlogits, self.dcomponents = net.grads["prior.logits"], net.grads["prior.components"]


@PRIOR_FRAGMENTS.register("vamp")
class VampPriorFragment(MixturePriorFragment):
    """p(z) = 1/K sum_k q(z | hardtanh(w_k)): the mixture with logits 0 whose components
    are the encoder's output on the pseudo-inputs (cupyvae.distributions.vamp)."""

    def __init__(self, prior, net):
        super().__init__(prior, net)
        self.w = net.params["prior.pseudo_inputs"]
        self.dw = net.grads["prior.pseudo_inputs"]
        self.logits = self.ws.array("prior.logits", (prior.n_components,))   # equal weights
        self._dx = self._du = None

    @property
    def encoder_rows(self) -> int:
        return self.prior.n_components

    def in_step(self, enc, enc_grad, batch):
        self.components, self.dcomponents = enc[-1][batch:], enc_grad[-1][batch:]
        self.dlogits = self.ws.array("prior.dlogits_unused", (self.k,))      # 1/K is fixed
        self._dx = self.ws.array("prior.encoder_input_grad", enc[0].shape)
        self._du = self._dx[batch:]
        return [ops.vamp_pseudo_inputs_forward(self.w, enc[0][batch:])]

    def prepared(self):
        encoder = self.net.spec.encoder
        acts = self.net.activations("prior.encoder", encoder, self.prior.n_components)
        self.components = acts[-1]
        return [ops.vamp_pseudo_inputs_forward(self.w, acts[0]), *self.net.forward(encoder, acts)]

    def encoder_input_grad(self):
        # The batch's rows of d input are computed too (one fused launch) and not used.
        return self._dx

    def after_encoder_backward(self):
        return [] if self._du is None else [ops.vamp_pseudo_inputs_backward(self.w, self._du, self.dw)]


# ------------------------------------------------------------------------------ assembly
@dataclass
class Fragments:
    """The fragments of one plan; `objective` is None for inference."""
    posterior: PosteriorFragment
    prior: PriorFragment
    kl: KlFragment
    objective: "ObjectiveFragment | None" = None


def missing_fragments(spec) -> list[str]:
    """What the kernel path lacks to run the ELBO of this model (empty when nothing)."""
    missing = []
    if spec.posterior.name not in POSTERIOR_FRAGMENTS:
        missing.append(f"a kernel fragment for posterior {spec.posterior.name!r}")
    if spec.analytic_kl is not None:
        if _pair(spec) not in KL_FRAGMENTS:
            missing.append(f"a kernel for the closed-form KL of posterior {spec.posterior.name!r} "
                           f"to prior {spec.prior.name!r}")
    elif spec.prior.name not in PRIOR_FRAGMENTS:
        missing.append(f"a kernel fragment for prior {spec.prior.name!r} (its Monte-Carlo KL "
                       "needs log p(z) on the device)")
    return missing


def fragments_for(spec, net: Network, objective=None) -> Fragments:
    """The fragments of `spec` over `net`'s workspace, with the training objective's
    (a cupyvae.objectives.Objective) when given.  ValueError naming what is missing."""
    missing = missing_fragments(spec)
    if missing:
        raise ValueError("the kernel path lacks " + "; ".join(missing))
    posterior = POSTERIOR_FRAGMENTS.get(spec.posterior.name)(spec.posterior, net.ws)
    prior_class = PRIOR_FRAGMENTS.get(spec.prior.name) if spec.prior.name in PRIOR_FRAGMENTS \
        else PriorFragment
    prior = prior_class(spec.prior, net)
    kl = (KL_FRAGMENTS.get(_pair(spec))(net.ws) if spec.analytic_kl is not None
          else MonteCarloKl(posterior, prior, net.ws))
    parts = Fragments(posterior, prior, kl)
    if objective is not None:
        parts.objective = objective_fragment(spec, objective, parts, net.ws)
    return parts


def objective_fragment(spec, objective, parts: Fragments, ws: Workspace) -> "ObjectiveFragment":
    fragment_class = OBJECTIVE_FRAGMENTS.get(objective.name)
    problem = fragment_class.missing(spec, objective)
    if problem:
        raise ValueError(problem)
    return fragment_class(objective, parts, ws)


def _pair(spec) -> str:
    return kl_key(spec.posterior.name, spec.prior.name)


# ------------------------------------------------------------------------------ objectives
class ObjectiveFragment:
    """A training objective's launches around the decoder (see the module docstring)."""

    def __init__(self, objective, parts: Fragments, ws: Workspace):
        self.objective, self.parts, self.ws = objective, parts, ws

    @classmethod
    def missing(cls, spec, objective) -> str | None:
        """Why the kernel path cannot train `objective` for `spec` (None: it can)."""
        return None

    @property
    def samples(self) -> int:
        """Rows of z per example."""
        return 1

    def likelihood_scale(self, batch: int) -> float:
        """What the likelihood kernel multiplies its d nll / d p_raw by."""
        return 1.0 / batch

    def data_rows(self, io: StepIO):
        """The (R, D) rows the likelihood scores."""
        return io.x

    def forward(self, io: StepIO) -> list:
        raise NotImplementedError

    def weigh(self, io: StepIO) -> list:
        return []

    def backward(self, io: StepIO) -> list:
        raise NotImplementedError

    def loss_rows(self, io: StepIO) -> tuple:
        """(a, b), (B,) each: the step's loss is mean_b (a_b + beta b_b) (end_step)."""
        raise NotImplementedError

    def term_rows(self, io: StepIO) -> tuple:
        """(reconstruction rows, KL rows), (R,) each: the ELBO's two terms (step_terms)."""
        raise NotImplementedError


@OBJECTIVE_FRAGMENTS.register("elbo")
class ElboFragment(ObjectiveFragment):
    """The negative ELBO with the KL fragment's KL, weighted by the device KL weight;
    free bits floor each latent dimension's batch-mean KL (a closed-form pair that
    factorises per dimension)."""

    @classmethod
    def missing(cls, spec, objective):
        pair = KL_FRAGMENTS.get(_pair(spec)) if _pair(spec) in KL_FRAGMENTS else None
        if objective.free_bits > 0 and not hasattr(pair, "per_dimension"):
            return (f"free bits on the kernel devices need a per-dimension KL kernel for posterior "
                    f"{spec.posterior.name!r} with prior {spec.prior.name!r}")
        return None

    def forward(self, io):
        kl = self._kl(io)
        launches = self.parts.kl.forward(io.q, io.noise, io.z, kl)
        if self.objective.free_bits > 0:
            kl_dim = _rows("objective.kl_dim", self.ws, io.batch, io.z.shape[1])
            active, kl_mean = self._per_dimension(io, "active"), self._per_dimension(io, "kl_mean")
            launches += [*self.parts.kl.per_dimension(io.q, kl_dim),
                         ops.free_bits_kl(kl_dim, self.objective.free_bits, self._floored(io),
                                          active, kl_mean)]
        return launches

    def backward(self, io):
        scale = 1.0 / io.batch
        if self.objective.free_bits == 0:
            return self.parts.kl.backward(io.q, io.z, io.dz, io.noise, scale, io.kl_weight, io.dq)
        weight = self._per_dimension(io, "weight")
        return [*self.parts.kl.backward(io.q, io.z, io.dz, io.noise, 0.0, io.kl_weight, io.dq),
                ops.scaled_by(self._per_dimension(io, "active"), io.kl_weight, weight),
                *self.parts.kl.per_dimension_backward(io.q, weight, scale, io.dq)]

    def loss_rows(self, io):
        return io.nll, self._floored(io) if self.objective.free_bits > 0 else self._kl(io)

    def term_rows(self, io):
        return io.nll, self._kl(io)

    def _kl(self, io):
        return _rows("objective.kl", self.ws, io.batch)

    def _floored(self, io):
        return _rows("objective.floored_kl", self.ws, io.batch)

    def _per_dimension(self, io, what: str):
        return self.ws.array(f"objective.{what}", (io.z.shape[1],))


@OBJECTIVE_FRAGMENTS.register("iwae")
class IwaeFragment(ObjectiveFragment):
    """The negative IWAE bound with k samples per example: z on B*k rows (row b*k + i is
    sample i of example b, Philox row b*k + i), weighted by the normalised importance
    weights (cupyvae.reference.iwae_loss_and_grads)."""

    @classmethod
    def missing(cls, spec, objective):
        if spec.prior.name not in PRIOR_FRAGMENTS:
            return (f"objective 'iwae' on the kernel devices needs log p(z) on the device: prior "
                    f"{spec.prior.name!r} has no kernel fragment")
        return None

    @property
    def samples(self):
        return self.objective.samples

    def likelihood_scale(self, batch):
        return 1.0

    def data_rows(self, io):
        return _rows("objective.x_rows", self.ws, io.z.shape[0], io.x.shape[1])

    def forward(self, io):
        k, post = self.samples, self.parts.posterior
        q_rows = self._q_rows(io)
        return [ops.repeat_rows(io.q, k, q_rows),
                ops.repeat_rows(io.x, k, self.data_rows(io)),
                *post.sample(q_rows, io.noise, io.z),
                *post.log_q(q_rows, io.noise, self._row("log_q", io)),
                *self.parts.prior.log_prob(io.z, self._row("log_p", io))]

    def weigh(self, io):
        g, log_q, log_p = self._row("g", io), self._row("log_q", io), self._row("log_p", io)
        return [ops.iwae_weights(io.nll, log_p, log_q, self.samples, 1.0 / io.batch,
                                 self._bound(io), g),
                ops.scale_rows(io.dp, g),
                ops.negated(g, self._row("g_p", io)),
                ops.monte_carlo_kl(log_q, log_p, self._row("kl", io))]

    def backward(self, io):
        g_p, prior = self._row("g_p", io), self.parts.prior
        dq_rows = self.ws.array("objective.dq_rows", self._q_rows(io).shape)
        return [*prior.backward_z(io.z, g_p, io.dz),
                *self.parts.posterior.weighted_backward(self._q_rows(io), io.dz, self._row("g", io),
                                                        io.noise, dq_rows),
                ops.sum_row_groups(dq_rows, self.samples, io.dq),
                *prior.backward_params(io.z, g_p)]

    def loss_rows(self, io):
        return self._bound(io), _rows("objective.no_kl", self.ws, io.batch)   # zeros, never written

    def term_rows(self, io):
        return io.nll, self._row("kl", io)

    def _q_rows(self, io):
        return _rows("objective.q_rows", self.ws, io.z.shape[0], io.q.shape[1])

    def _row(self, what: str, io):
        return _rows(f"objective.{what}", self.ws, io.z.shape[0])

    def _bound(self, io):
        return _rows("objective.bound", self.ws, io.batch)
