"""Device-resident hyperparameters and schedules (cupyvae.schedules, kernels/schedule.cu),
clipping by global norm (cupyvae.optim, kernels/grad_clip.cu), the KL weight, and what they
do to training: the same steps on cpu and emulated, no re-capture when a value changes, the
Adam moments resident on the device."""
import math
import re

import numpy as np
import pytest

import cupyvae
from cupyvae import optim, schedules
from cupyvae.config import VAEConfig
from cupyvae.cuda import graph, ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.cuda.loader import kernel_dir
from cupyvae.options import OptionError
from cupyvae.reference import negative_elbo_and_grads, negative_elbo_rows
from cupyvae.schedules import (HYPER_SIZE, SCHED_CLIP_SCALE, SCHED_GRAD_NORM, SCHED_KL_WEIGHT,
                               SCHED_LR, SCHED_SIZE, SCHED_STEP_SIZE, hyper_array, schedule_step)
from cupyvae.spec import ModelSpec
from cupyvae.training import TrainingOptions

from gradcheck import assert_grad_close, numeric_grad
from test_cli import assert_ok, assert_one_line_error, run_cli

F32 = np.float32
SCHEDULED = dict(lr=3e-3, lr_schedule="cosine", lr_warmup_steps=3, lr_decay_steps=7, lr_min=1e-4,
                 kl_weight=0.7, kl_warmup_steps=5, weight_decay=1e-3, clip_norm=0.5)


def hyper_of(**options):
    return hyper_array(TrainingOptions(**options), optim.Adam())


def twin_at(step, hyper):
    return schedule_step(np.array([step, 0], np.uint32), hyper)


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ------------------------------------------------------------------ the slots
def test_python_slots_mirror_the_header():
    text = (kernel_dir() / "schedule.cuh").read_text()
    defines = {name: int(value) for name, value in
               re.findall(r"^#define ((?:HYPER|SCHED)_\w+) (\d+)", text, re.MULTILINE)}
    mirrored = {name: getattr(schedules, name) for name in dir(schedules)
                if re.fullmatch(r"(HYPER|SCHED)_[A-Z0-9_]+", name)}
    assert defines == mirrored
    for prefix, size in (("HYPER", HYPER_SIZE), ("SCHED", SCHED_SIZE)):
        slots = sorted(v for k, v in defines.items()
                       if k.startswith(prefix) and k != f"{prefix}_SIZE")
        assert slots == list(range(size)), f"{prefix} slots must be 0..{size - 1} without gaps"


# ------------------------------------------------------------------ schedule_step: kernel == twin
STEPS = [0, 1, 2, 3, 4, 6, 9, 10, 11, 57, 2 ** 24 + 1, 2 ** 32 - 1]


@pytest.mark.parametrize("options", [
    dict(), SCHEDULED, dict(lr=1e-2, lr_warmup_steps=1000, kl_warmup_steps=1),
    dict(lr_schedule="cosine", lr_decay_steps=2 ** 30, lr_min=0.0, kl_weight=0.0),
], ids=["defaults", "scheduled", "long-warmups", "long-cosine"])
def test_schedule_kernel_equals_twin_bit_for_bit(backend, options):
    """Doubles in the same order and the same libm on the emulator: the same float32 bits at
    every step, the first, the warm-up edges, the decay's end and the counter's last value."""
    hyper = hyper_of(**options)
    hyper_d = to_device(hyper, backend)
    for step in STEPS:
        counters = np.array([step, 3], np.uint32)
        sched = to_device(np.full(SCHED_SIZE, np.nan, F32), backend)
        sched[SCHED_GRAD_NORM] = 0       # the one slot schedule_step does not write
        run(ops.schedule_step(to_device(counters, backend), hyper_d, sched), backend)
        got, want = np.array(to_host(sched)), twin_at(step, hyper)
        assert same_bits(got, want), f"step {step}: kernel {got} vs twin {want}"


@pytest.mark.parametrize("betas", [dict(beta1=0.0, beta2=0.5), dict(beta1=0.875, beta2=0.999)])
def test_schedule_kernel_equals_twin_for_other_betas(backend, betas):
    hyper = hyper_array(TrainingOptions(), optim.Adam(**betas))
    for step in (0, 1, 100):
        sched = to_device(np.zeros(SCHED_SIZE, F32), backend)
        run(ops.schedule_step(to_device(np.array([step, 0], np.uint32), backend),
                              to_device(hyper, backend), sched), backend)
        assert same_bits(np.array(to_host(sched)), twin_at(step, hyper)), step


# ------------------------------------------------------------------ the twin: the formulas
def test_constant_learning_rate_and_adam_constants():
    hyper = hyper_of(lr=2e-3)
    for step in (0, 5, 10 ** 6):
        sched = twin_at(step, hyper)
        assert sched[SCHED_LR] == F32(2e-3) and sched[SCHED_KL_WEIGHT] == 1
        assert sched[SCHED_CLIP_SCALE] == 1
    # step 0: t = 1, c1 = 1 - b1, c2 = 1 - b2 (float32 betas): step_size = lr sqrt(c2) / c1
    b1, b2 = float(F32(0.9)), float(F32(0.999))
    assert twin_at(0, hyper)[SCHED_STEP_SIZE] == F32(2e-3 * math.sqrt(1 - b2) / (1 - b1))
    # late steps: both corrections are 1
    assert twin_at(10 ** 6, hyper)[SCHED_STEP_SIZE] == F32(2e-3)


def test_linear_warmup_then_cosine_decay():
    lr, lr_min, warmup, decay = 3e-3, 1e-4, 4, 10
    hyper = hyper_of(lr=lr, lr_schedule="cosine", lr_min=lr_min, lr_warmup_steps=warmup,
                     lr_decay_steps=decay)
    lrs = np.array([twin_at(s, hyper)[SCHED_LR] for s in range(20)], np.float64)
    np.testing.assert_allclose(lrs[:warmup], lr * np.arange(1, warmup + 1) / warmup, rtol=1e-7)
    assert lrs[warmup] == F32(lr), "the cosine starts at lr once the warm-up is over"
    np.testing.assert_allclose(lrs[warmup + decay // 2], (lr + lr_min) / 2, rtol=1e-7)
    assert (lrs[warmup + decay:] == F32(lr_min)).all(), "after the decay lr stays at lr_min"
    assert (np.diff(lrs[warmup:warmup + decay + 1]) < 0).all(), "cosine decreases monotonically"
    expected = [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * k / decay)) / 2
                for k in range(decay + 1)]
    np.testing.assert_allclose(lrs[warmup:warmup + decay + 1], expected, rtol=1e-7)


def test_kl_warmup_from_zero():
    hyper = hyper_of(kl_weight=0.5, kl_warmup_steps=4)
    weights = [twin_at(s, hyper)[SCHED_KL_WEIGHT] for s in range(7)]
    assert weights == [0.0, F32(0.125), F32(0.25), F32(0.375), F32(0.5), F32(0.5), F32(0.5)]


# ------------------------------------------------------------------ clipping
NORM_SIZES = [1, 31, 257, 5000, 300_001]     # 300001 > 1024 blocks x 256: threads loop


def clip_on(backend, g, hyper, function=None):
    partials = np.zeros(optim.grad_norm_blocks(g.size))
    sched = twin_at(3, hyper)
    g_d, p_d, s_d, h_d = (to_device(a.copy(), backend) for a in (g, partials, sched, hyper))
    first = ops.grad_norm_partials(g_d, p_d)
    if function is None:
        run(first, backend)
    else:
        function(first.grid, first.block, first.args)
    run(ops.grad_clip_scale(p_d, h_d, s_d), backend)
    return np.array(to_host(p_d)), np.array(to_host(s_d))


@pytest.mark.parametrize("n", NORM_SIZES)
def test_clipping_kernels_equal_twins_bit_for_bit(backend, n):
    g = np.random.default_rng(n).normal(0, 1, n).astype(F32)
    g[::7] = 0.0
    hyper = hyper_of(clip_norm=0.5)
    partials, sched = clip_on(backend, g, hyper)
    want_partials = optim.grad_norm_partials(g, np.zeros(optim.grad_norm_blocks(n)))
    want_sched = optim.grad_clip_scale(want_partials, hyper, twin_at(3, hyper))
    assert same_bits(partials, want_partials) and same_bits(sched, want_sched)
    # The blocked float64 sum against NumPy's float64 norm: both exact squares, sums of
    # <= 3e5 terms, each rounding <= 2^-53 relative: 1e-12 is generous and still 1e4 ulp of
    # float32 away from what a float32 accumulation or a dropped element would give.
    norm = np.linalg.norm(g.astype(np.float64))
    total = math.sqrt(float(want_partials.sum()))
    assert total == pytest.approx(norm, rel=1e-12)
    # float32 results of nearly the same doubles: equal, or one float32 rounding apart
    assert sched[SCHED_GRAD_NORM] == pytest.approx(norm, rel=6e-8)
    assert sched[SCHED_CLIP_SCALE] == pytest.approx(0.5 / norm if norm > 0.5 else 1.0, rel=6e-8)


def test_clipping_is_deterministic_under_every_thread_order():
    from cupyvae.cuda.loader import load_source, module_from_source

    g = np.random.default_rng(1).normal(0, 1, 70_001).astype(F32)
    hyper = hyper_of(clip_norm=1.0)
    results = [clip_on("emulated", g, hyper)]
    for order in ("reverse", "random"):
        module = module_from_source(load_source("grad_clip"), "emulated", thread_order=order, seed=5)
        results.append(clip_on("emulated", g, hyper, module.get_function("grad_norm_partials")))
    for partials, sched in results[1:]:
        assert same_bits(partials, results[0][0]) and same_bits(sched, results[0][1])


def test_clip_scale_bounds_the_norm_and_leaves_small_gradients_alone():
    g = np.random.default_rng(2).normal(0, 1, 1000).astype(F32)
    norm = np.linalg.norm(g.astype(np.float64))
    for bound, scaled in ((norm / 4, True), (norm * 4, False)):
        _, sched = clip_on("emulated", g, hyper_of(clip_norm=float(bound)))
        clipped = np.linalg.norm((g * sched[SCHED_CLIP_SCALE]).astype(np.float64))
        if scaled:
            assert clipped == pytest.approx(bound, rel=1e-6)   # float32 scale and products
        else:
            assert sched[SCHED_CLIP_SCALE] == 1


def test_a_nan_gradient_is_not_hidden_by_clipping():
    g = np.ones(100, F32)
    g[17] = np.nan
    _, sched = clip_on("emulated", g, hyper_of(clip_norm=1.0))
    assert math.isnan(sched[SCHED_GRAD_NORM]) and sched[SCHED_CLIP_SCALE] == 1


def test_clipping_launch_validation():
    g, partials = np.zeros(10, F32), np.zeros(1)
    with pytest.raises(ValueError, match=r"partials must have shape \(1,\)"):
        ops.grad_norm_partials(g, np.zeros(2))
    with pytest.raises(ValueError, match="partials must be .* float64"):
        ops.grad_norm_partials(g, np.zeros(1, F32))
    with pytest.raises(ValueError, match="hyper must be"):
        ops.grad_clip_scale(partials, np.zeros(3), np.zeros(SCHED_SIZE, F32))
    with pytest.raises(ValueError, match="sched must be"):
        ops.schedule_step(np.zeros(2, np.uint32), np.zeros(HYPER_SIZE), np.zeros(SCHED_SIZE))


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("bad, field", [
    (dict(lr_warmup_steps=-1), "lr_warmup_steps"), (dict(kl_warmup_steps=2.5), "kl_warmup_steps"),
    (dict(kl_weight=-0.1), "kl_weight"), (dict(kl_weight=float("nan")), "kl_weight"),
    (dict(lr_min=float("inf"), lr_schedule="cosine", lr_decay_steps=3), "lr_min"),
    (dict(clip_norm=0.0), "clip_norm"), (dict(clip_norm=-1.0), "clip_norm"),
    (dict(clip_norm=float("nan")), "clip_norm"), (dict(lr_schedule="step"), "lr_schedule"),
    (dict(lr_schedule="cosine"), "lr_decay_steps"),              # cosine needs its length
    (dict(lr_decay_steps=10), "lr_decay_steps"),                 # only cosine decays
    (dict(lr_schedule="cosine", lr_decay_steps=5, lr_min=1.0), "lr_min"),   # lr_min > lr
])
def test_bad_schedule_options_are_refused_naming_the_field(bad, field):
    with pytest.raises(OptionError, match=f"training option {field} = "):
        TrainingOptions(**bad)
    model = cupyvae.VAE((2, 3), latent_dim=2, hidden=(4,))
    with pytest.raises(ValueError, match=field):
        model.fit(np.zeros((4, 2, 3), F32), epochs=1, batch_size=2, **bad)
    assert model.optimizer is None, "refused before any work"


def test_schedule_flags_reach_the_cli_and_config(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x_train=rng.random((40, 4, 4)).astype(F32),
             x_test=rng.random((10, 4, 4)).astype(F32))
    common = ["train", "--data", tmp_path / "tiny.npz", "--hidden", "6", "--latent-dim", "2",
              "--batch-size", "10", "--epochs", "2", "--device", "cpu"]
    result = run_cli(*common, "--out", tmp_path / "run", "--lr-schedule", "cosine",
                     "--lr-decay-steps", "5", "--lr-warmup-steps", "2", "--lr-min", "1e-4",
                     "--kl-weight", "0.5", "--kl-warmup-steps", "3", "--clip-norm", "10")
    assert_ok(result)
    import json
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert {k: training[k] for k in ("lr_schedule", "lr_decay_steps", "lr_warmup_steps", "lr_min",
                                     "kl_weight", "kl_warmup_steps", "clip_norm")} == dict(
        lr_schedule="cosine", lr_decay_steps=5, lr_warmup_steps=2, lr_min=1e-4, kl_weight=0.5,
        kl_warmup_steps=3, clip_norm=10.0)
    assert_one_line_error(run_cli(*common, "--out", tmp_path / "bad", "--clip-norm", "0"),
                          "--clip-norm", "> 0")


# ------------------------------------------------------------------ the KL weight (reference)
@pytest.mark.parametrize("kl", ["analytic", "monte-carlo"])
@pytest.mark.parametrize("kl_weight", [0.0, 0.37, 2.5])
def test_kl_weighted_loss_and_its_gradient(kl, kl_weight):
    """The loss is 1/B sum (nll + beta KL): linear in beta and equal to the negative ELBO at
    beta = 1; its gradient matches float64 central differences for every parameter."""
    spec = ModelSpec(VAEConfig(data_shape=(2, 3), latent_dim=3, hidden=(5,), activation="tanh"))
    if kl == "monte-carlo":
        spec.analytic_kl = None
    rng = np.random.default_rng(7)
    flat = spec.layout.zeros(np.float64)
    spec.init_params(flat)
    flat += 0.1 * rng.standard_normal(flat.shape)
    params = spec.layout.views(flat)
    grads = spec.layout.views(spec.layout.zeros(np.float64))
    scratch = spec.layout.views(spec.layout.zeros(np.float64))
    x, eps = rng.random((4, 6)), rng.standard_normal((4, 3))

    def loss(weight):
        return negative_elbo_and_grads(spec, params, scratch, x, eps, kl_weight=weight)

    assert loss(1.0) == pytest.approx(negative_elbo_rows(spec, params, x, eps).mean(), rel=1e-12)
    assert loss(kl_weight) == pytest.approx(loss(0.0) + kl_weight * (loss(1.0) - loss(0.0)),
                                            rel=1e-12, abs=1e-12)
    assert loss(2.0) != pytest.approx(loss(1.0)), "the KL term must be weighted"
    negative_elbo_and_grads(spec, params, grads, x, eps, kl_weight=kl_weight)
    for name in spec.layout.names():
        numeric = numeric_grad(lambda: loss(kl_weight), params[name])
        assert_grad_close(grads[name], numeric, f"beta={kl_weight}/{kl}: d loss / d {name}")


# ------------------------------------------------------------------ training: cpu == emulated
STEP_RTOL = 1e-5   # as tests/test_executor.py: float32 paths differing by summation order


def pair(**kw):
    args = dict(data_shape=(5, 7), latent_dim=3, hidden=(9, 6), activation=("tanh", "relu"), seed=5)
    args.update(kw)
    return cupyvae.VAE(**args, device="cpu"), cupyvae.VAE(**args, device="emulated")


def assert_close(got, want, what, rtol=STEP_RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max(initial=0)), 1e-3)
    err = float(np.abs(got - want).max(initial=0))
    assert err <= rtol * scale, f"{what}: max err {err:.3g} > {rtol * scale:.3g}"


def test_cpu_and_emulated_train_step_for_step_with_warmup_cosine_kl_warmup_and_clipping():
    """Four epochs of 4 steps: the lr warms up over 3, decays over 7, then stays at lr_min;
    the KL weight rises over 5; the clip (0.5) is active.  Both paths read the very same
    float32 schedule values (kernel == twin) and clip with the same factor rounding."""
    x = np.random.default_rng(2).random((23, 5, 7)).astype(F32)
    ref, dev = pair()
    h_ref = ref.fit(x, epochs=4, batch_size=5, **SCHEDULED)
    h_dev = dev.fit(x, epochs=4, batch_size=5, **SCHEDULED)
    np.testing.assert_allclose(h_dev["train_loss"], h_ref["train_loss"], rtol=STEP_RTOL)
    assert_close(dev._executor.host_flat(), ref.flat_params, "params after 16 steps", rtol=1e-4)
    for name, got, want in zip("mv", dev._executor.host_moments(), ref._executor.host_moments()):
        assert_close(got, want, f"adam {name}", rtol=1e-4)
    sched = np.array(to_host(dev._executor.sched))
    assert same_bits(sched[:SCHED_CLIP_SCALE], twin_at(15, hyper_of(**SCHEDULED))[:SCHED_CLIP_SCALE])
    assert sched[SCHED_GRAD_NORM] > 0.5 and sched[SCHED_CLIP_SCALE] < 1, "clipping was active"
    # ...and the schedules change the result: without them the run differs.
    plain = cupyvae.VAE((5, 7), latent_dim=3, hidden=(9, 6), activation=("tanh", "relu"), seed=5)
    assert plain.fit(x, epochs=4, batch_size=5, lr=3e-3)["train_loss"] != h_ref["train_loss"]


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_schedules_continue_across_fit_calls(device):
    """Schedules follow the step counter of the whole training, so two fit calls of one epoch
    give the very bits of one call of two epochs."""
    x = np.random.default_rng(3).random((20, 5, 7)).astype(F32)
    once, twice = (cupyvae.VAE((5, 7), latent_dim=3, hidden=(8,), seed=4, device=device)
                   for _ in range(2))
    once.fit(x, epochs=2, batch_size=5, **SCHEDULED)
    twice.fit(x, epochs=1, batch_size=5, **SCHEDULED)
    twice.fit(x, epochs=1, batch_size=5, **SCHEDULED)
    assert once.history["train_loss"] == twice.history["train_loss"]
    assert same_bits(once._executor.host_flat(), twice._executor.host_flat())


def lit_then_dark(device, on_epoch=None):
    """A model trained one epoch on images, then 18 epochs (180 steps) on the same images with
    their first 14 pixels always 0, with betas 0.5 (so the moments of those pixels' encoder
    weights decay within ~100 steps, not thousands); on_epoch(model) after every epoch."""
    rng = np.random.default_rng(4)
    lit = rng.random((40, 5, 7)).astype(F32)
    dark = lit.copy()
    dark[:, :2, :] = 0.0
    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(6,), activation="tanh", seed=5,
                        device=device)
    model.optimizer = optim.Adam(beta1=0.5, beta2=0.5)
    callback = None if on_epoch is None else (lambda _: on_epoch(model))
    model.fit(lit, epochs=1, batch_size=4, on_epoch=callback)
    model.fit(dark, epochs=18, batch_size=4, on_epoch=callback)
    return model


DARK_WEIGHTS = np.arange(35 * 6).reshape(35, 6)[:14].ravel()   # encoder.0.weight rows 0..13


def test_cpu_and_emulated_agree_and_flush_alike_on_pixels_that_stay_zero():
    """The dark pixels' encoder weights get exactly zero gradients, so m and v decay until
    the flush zeroes them; unflushed, each would spend ~23 steps (a factor 2^23) in the
    subnormal range on its way to 0.  Checked after every epoch of 10 steps: no subnormal
    in m or v on either path; at the end the dark entries are exactly 0 on both and the
    parameters still agree step for step."""
    tiny = np.finfo(F32).tiny

    def no_subnormals(model):
        for name, a in zip("mv", model._executor.host_moments()):
            assert not ((a != 0) & (np.abs(a) < tiny)).any(), \
                f"{model.device} {name} holds subnormals after epoch {len(model.history['epoch'])}"

    models = [lit_then_dark(device, no_subnormals) for device in ("cpu", "emulated")]
    assert models[0].spec.layout.entries[0].name == "encoder.0.weight"
    for model in models:
        m, v = model._executor.host_moments()
        assert (m[DARK_WEIGHTS] == 0).all() and (v[DARK_WEIGHTS] == 0).all(), "not flushed"
    m_cpu = models[0]._executor.host_moments()[0]
    assert (np.delete(m_cpu[:35 * 6], DARK_WEIGHTS) != 0).mean() > 0.9, "lit pixels keep theirs"
    assert_close(models[1]._executor.host_flat(), models[0].flat_params,
                 "params after 190 steps", rtol=1e-4)


def test_the_flush_changes_no_parameter_bit(monkeypatch):
    """optim.adam_update's claim: a flushed m would have moved a weight by < 1e-22 in all, a
    flushed v not at all, so the same run without the flush has the very same parameter bits
    after every epoch, while its m is non-zero where the flushed m is 0."""
    def record(into):
        return lambda model: into.append((model.flat_params.copy(), model._executor.m.copy()))

    flushed, unflushed = [], []
    lit_then_dark("cpu", record(flushed))
    monkeypatch.setattr(optim, "M_FLUSH", F32(0))
    monkeypatch.setattr(optim, "V_FLUSH", F32(0))
    lit_then_dark("cpu", record(unflushed))
    fired = False
    for epoch, ((p, m), (p_kept, m_kept)) in enumerate(zip(flushed, unflushed), start=1):
        assert same_bits(p, p_kept), f"the flush changed parameters by epoch {epoch}"
        assert (m[m != m_kept] == 0).all()
        fired |= bool((m != m_kept).any())
    assert fired, "the flush never fired: the test shows nothing"


# ------------------------------------------------------------------ no re-capture
def test_schedules_and_changed_hyperparameters_never_recapture(monkeypatch):
    """Graph mode on the emulator, 4 steps per epoch in graphs of 3 (+ 1): two epochs with
    every schedule capture twice (the chunk and the remainder) at the first epoch and
    never again; a second fit call with other lr, schedule lengths, KL weight and clip bound
    (new values in `hyper`, and a new array of the same shape) captures nothing, yet
    trains with the new values: its bits equal an eager run given the same options."""
    captures = []
    real_capture = graph.capture
    monkeypatch.setattr(graph, "capture",
                        lambda *a, **k: captures.append(a[1]) or real_capture(*a, **k))
    x = np.random.default_rng(5).random((23, 5, 7)).astype(F32)
    changed = dict(SCHEDULED, lr=1e-3, lr_warmup_steps=1, lr_decay_steps=20, kl_weight=0.2,
                   kl_warmup_steps=0, clip_norm=2.0, weight_decay=0.0)
    runs = {}
    for execution in ("graph", "eager"):
        model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated",
                            execution=execution)
        model._executor.steps_per_graph = 3
        model.fit(x, epochs=2, batch_size=5, **SCHEDULED)
        if execution == "graph":
            assert captures == [3, 1], "two graphs (3 steps and 1) at the first epoch, no more"
        model.fit(x.copy(), epochs=2, batch_size=5, **changed)
        runs[execution] = model
    assert captures == [3, 1], "changing hyperparameters between fit calls re-captured"
    graph_run, eager_run = runs["graph"], runs["eager"]
    assert graph_run.history["train_loss"] == eager_run.history["train_loss"]
    assert same_bits(graph_run._executor.host_flat(), eager_run._executor.host_flat())
    hyper = np.array(to_host(graph_run._executor.hyper))
    assert same_bits(hyper, hyper_of(**changed)), "the device holds the new hyperparameters"
    # Turning clipping off changes the plan (no clipping launches): one new capture pair.
    graph_run.fit(x, epochs=1, batch_size=5, **dict(changed, clip_norm=None))
    assert captures == [3, 1, 3, 1]


def test_a_second_training_array_never_overwrites_the_first():
    """The device buffer of the data is reused for the next array of the same shape; it must
    be the executor's own copy (on the emulator an upload could alias the caller's array)."""
    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated")
    first = np.random.default_rng(9).random((20, 5, 7)).astype(F32)
    second = np.zeros_like(first)
    kept = first.copy()
    model.fit(first, epochs=1, batch_size=5)
    model.fit(second, epochs=1, batch_size=5)
    assert same_bits(first, kept), "the caller's first array was overwritten"
    assert same_bits(model._executor._data[1], second.reshape(20, 35))


def test_a_training_array_of_a_new_shape_frees_the_old_device_copy_before_allocating(monkeypatch):
    """The old device dataset (and permutation) is held by the executor, its plan and its
    steps (graphs); all must let go of it before the new copy is allocated, or a dataset
    close to the device's memory could not be replaced by another."""
    import gc
    import weakref

    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated")
    model.fit(np.random.default_rng(9).random((20, 5, 7)).astype(F32), epochs=1, batch_size=5)
    ex = model._executor
    old = [weakref.ref(ex._data[1]), weakref.ref(ex._perm)]
    alive_at_allocation = []

    class Allocator:          # the executor's array module, noting what is alive at each copy
        def __getattr__(self, name):
            return getattr(np, name)

        def array(self, *args, **kwargs):
            gc.collect()
            alive_at_allocation.append([r() is not None for r in old])
            return np.array(*args, **kwargs)

    monkeypatch.setattr(ex, "xp", Allocator())
    ex._device_data(np.zeros((30, 35), F32))
    assert alive_at_allocation == [[False, False]], "the old device data outlived the new upload"


# ------------------------------------------------------------------ host traffic
def test_an_epoch_moves_only_the_permutation_counters_hyper_and_losses(monkeypatch):
    """Moments and parameters stay on the device: within an epoch the executor uploads the
    permutation, `hyper` and the counters and reads back only the losses, with the ELBO's
    two terms of every step in the same array."""
    from cupyvae.cuda import executor as kernel_executor

    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated")
    x = np.random.default_rng(6).random((20, 5, 7)).astype(F32)
    model.fit(x, epochs=1, batch_size=5)
    uploads, downloads = [], []
    real_to_device, real_to_host = kernel_executor.to_device, kernel_executor.to_host
    monkeypatch.setattr(kernel_executor, "to_device",
                        lambda a, d: uploads.append(np.shape(a)) or real_to_device(a, d))
    monkeypatch.setattr(kernel_executor, "to_host",
                        lambda a: downloads.append(np.shape(a)) or real_to_host(a))
    data = model._executor._data[0]      # the array fit uploaded: resident, not uploaded again
    model._executor.train_epoch(data, np.arange(20), TrainingOptions(batch_size=5), model.optimizer)
    assert sorted(uploads) == sorted([(20,), (HYPER_SIZE,), (2,)])
    assert downloads == [(3, 4)]


def test_rollback_restores_parameters_and_moments_from_the_device_snapshot(monkeypatch):
    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated")
    x = np.random.default_rng(7).random((20, 5, 7)).astype(F32)
    model.fit(x, epochs=1, batch_size=5)
    before = (model._executor.host_flat(), *model._executor.host_moments())
    step = model.optimizer.step_count
    real_epoch = model._executor.train_epoch

    def diverging(*args, **kwargs):
        real_epoch(*args, **kwargs)
        for buffer in (model._executor.flat, model._executor.m, model._executor.v):
            buffer[...] = np.nan
        return float("nan")

    monkeypatch.setattr(model._executor, "train_epoch", diverging)
    with pytest.raises(cupyvae.TrainingDiverged):
        model.fit(x, epochs=1, batch_size=5)
    after = (model._executor.host_flat(), *model._executor.host_moments())
    for name, a, b in zip(("params", "m", "v"), before, after):
        assert same_bits(a, b), f"{name} not restored"
    assert model.optimizer.step_count == step


def test_checkpoint_carries_the_device_moments(tmp_path):
    model = cupyvae.VAE((5, 7), latent_dim=3, hidden=(7,), seed=9, device="emulated")
    x = np.random.default_rng(8).random((20, 5, 7)).astype(F32)
    model.fit(x, epochs=1, batch_size=5, checkpoint=tmp_path / "ck.safetensors")
    for device in ("cpu", "emulated"):
        loaded = cupyvae.load(tmp_path / "ck.safetensors", device=device)
        for a, b in zip(loaded._executor.host_moments(), model._executor.host_moments()):
            assert same_bits(a, b)
        assert loaded.optimizer.step_count == 4
