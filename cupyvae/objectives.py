"""Training objectives: what one training step minimises, chosen by name.

    elbo   the negative ELBO (Kingma & Welling 2014), optionally with free bits (Kingma et
           al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow",
           eq. 15): a floor of `free_bits` nats per latent dimension on the batch-averaged KL
    iwae   the negative importance-weighted bound (Burda, Grosse & Salakhutdinov 2016,
           "Importance Weighted Autoencoders") with `iw_samples` = k samples per example

An objective is built from the training options (`objective_for(options)`); it checks the
options that only make sense together (TrainingOptions calls `check_options` when it is
built, so the API, the CLI and config.json refuse the same combinations), checks the model
(`check_model`: free bits need a per-dimension KL, IWAE a reparameterizable posterior), says
how many noise rows a batch needs, and computes one step with the NumPy reference
(cupyvae.reference).  It also keeps the epoch's running means of the ELBO's two terms
(reconstruction and KL) for the history.
"""
from __future__ import annotations

from typing import ClassVar

from .options import UINT32_MAX, OptionError
from .reference import (iwae_loss_and_grads, kl_per_dimension_for_free_bits,
                        negative_elbo_and_grads)
from .registry import Registry
from .spec import ModelSpec

OBJECTIVES: Registry[type["Objective"]] = Registry("objective")


def objective_for(options) -> "Objective":
    """The objective a TrainingOptions asks for."""
    return OBJECTIVES.get(options.objective).from_options(options)


def loss_name(options) -> str:
    """What a history's train_loss is under the TrainingOptions `options`, in words (for the
    loss plot's legend): e.g. "negative ELBO", "negative IWAE bound (k = 5)"."""
    return OBJECTIVES.get(options.objective).loss_name(options)


class Objective:
    """One training objective; subclasses register with @OBJECTIVES.register(name)."""
    name: ClassVar[str] = ""

    def __init__(self):
        self._sums = {"recon": 0.0, "kl": 0.0}
        self._steps = 0

    @classmethod
    def from_options(cls, options) -> "Objective":
        raise NotImplementedError

    @classmethod
    def check_options(cls, options) -> None:
        """Raise OptionError naming the field of an option that makes no sense with this
        objective."""

    @classmethod
    def loss_name(cls, options) -> str:
        """What the training loss is under `options`, in words (see loss_name)."""
        return f"the {cls.name} objective"

    def check_model(self, spec: ModelSpec) -> None:
        """Raise ValueError naming the distributions if this model cannot train with it."""

    def noise_rows(self, batch: int) -> int:
        """Rows of reparameterization noise one step of `batch` examples draws."""
        return batch

    def step(self, spec: ModelSpec, params: dict, grads: dict, x, eps, terms: dict,
             kl_weight: float) -> float:
        raise NotImplementedError

    def loss_and_grads(self, spec: ModelSpec, params: dict, grads: dict, x, eps,
                       kl_weight: float = 1.0) -> float:
        """One step's loss (mean over the batch, nats per example); writes every gradient
        into `grads` with `=` and adds the step's ELBO terms to the epoch's running means.
        `kl_weight`: this step's KL weight beta (cupyvae.schedules: --kl-weight after its
        warm-up; 1 for the ELBO itself)."""
        terms: dict = {}
        loss = self.step(spec, params, grads, x, eps, terms, kl_weight)
        for key in self._sums:
            self._sums[key] += terms[key]
        self._steps += 1
        return loss

    def epoch_terms(self) -> dict | None:
        """{"train_recon", "train_kl"}: the means over the steps since the last call (None
        if there were none); starts the next epoch's sums."""
        if not self._steps:
            return None
        means = {f"train_{key}": total / self._steps for key, total in self._sums.items()}
        self._reset()
        return means

    def _reset(self) -> None:
        self._sums = {key: 0.0 for key in self._sums}
        self._steps = 0


@OBJECTIVES.register("elbo")
class Elbo(Objective):
    """The negative ELBO, one reparameterized sample per example; `free_bits` = lambda > 0
    floors each latent dimension's batch-averaged KL at lambda nats."""
    name = "elbo"

    def __init__(self, free_bits: float = 0.0):
        super().__init__()
        self.free_bits = float(free_bits)

    @classmethod
    def from_options(cls, options) -> "Elbo":
        return cls(free_bits=options.free_bits)

    @classmethod
    def loss_name(cls, options) -> str:
        weighted = options.kl_weight != 1 or options.kl_warmup_steps
        name = "reconstruction + β KL" if weighted else "negative ELBO"
        details = []
        if options.kl_weight != 1:
            details.append(f"β = {options.kl_weight:g}")
        if options.kl_warmup_steps:
            details.append(f"β rising from 0 over {options.kl_warmup_steps} steps")
        if options.free_bits:
            details.append(f"free bits {options.free_bits:g} nats per dimension")
        return name + (f" ({', '.join(details)})" if details else "")

    @classmethod
    def check_options(cls, options) -> None:
        if options.iw_samples != 1:
            raise OptionError("iw_samples", options.iw_samples,
                              "importance samples are for {objective} iwae; {objective} elbo "
                              "draws one sample per example (leave {iw_samples} at 1)",
                              "training option")

    def check_model(self, spec: ModelSpec) -> None:
        if self.free_bits > 0:
            kl_per_dimension_for_free_bits(spec, self.free_bits)

    def step(self, spec, params, grads, x, eps, terms, kl_weight) -> float:
        return negative_elbo_and_grads(spec, params, grads, x, eps, kl_weight=kl_weight,
                                       free_bits=self.free_bits, terms=terms)


@OBJECTIVES.register("iwae")
class Iwae(Objective):
    """The negative IWAE bound with k = `samples` importance samples per example."""
    name = "iwae"

    def __init__(self, samples: int = 1):
        super().__init__()
        self.samples = int(samples)

    @classmethod
    def from_options(cls, options) -> "Iwae":
        return cls(samples=options.iw_samples)

    @classmethod
    def loss_name(cls, options) -> str:
        return f"negative IWAE bound (k = {options.iw_samples})"

    @classmethod
    def check_options(cls, options) -> None:
        rows = options.batch_size * options.iw_samples
        if rows > UINT32_MAX:   # a step's decoder rows key Philox as a uint32
            raise OptionError("iw_samples", options.iw_samples,
                              f"{{batch_size}} {options.batch_size} x {{iw_samples}} "
                              f"{options.iw_samples} = {rows:,} decoder rows per step, more than "
                              f"{UINT32_MAX:,} (the rows of a step are counted in uint32); "
                              "reduce {batch_size} or {iw_samples}", "training option")
        if options.free_bits != 0:
            raise OptionError("free_bits", options.free_bits,
                              "free bits floor the ELBO's KL term, which the IWAE bound does not "
                              "have; use {objective} elbo for free bits", "training option")
        # The KL weight and its warm-up are the ELBO's too.
        if options.kl_weight != 1:
            raise OptionError("kl_weight", options.kl_weight,
                              "a KL weight applies to the ELBO's KL term, which the IWAE bound "
                              "does not have; leave {kl_weight} at 1 with {objective} iwae",
                              "training option")
        if options.kl_warmup_steps != 0:
            raise OptionError("kl_warmup_steps", options.kl_warmup_steps,
                              "a KL warm-up applies to the ELBO's KL term, which the IWAE bound "
                              "does not have; leave {kl_warmup_steps} at 0 with {objective} iwae",
                              "training option")

    def check_model(self, spec: ModelSpec) -> None:
        if not spec.posterior.reparameterizable:
            raise OptionError("objective", "iwae",
                              f"needs a reparameterizable {{posterior}}; "
                              f"{spec.config.posterior} is not", "training option")

    def noise_rows(self, batch: int) -> int:
        return batch * self.samples

    def step(self, spec, params, grads, x, eps, terms, kl_weight) -> float:
        if kl_weight != 1:   # check_options refuses the options that would schedule one
            raise ValueError(f"objective 'iwae' has no KL term to weight; got kl_weight "
                             f"{kl_weight:g}")
        return iwae_loss_and_grads(spec, params, grads, x, eps, self.samples, terms=terms)
