"""GPU against emulator, BIT FOR BIT, where the parity policy says the bits must agree
(cupyvae.cuda.loader: NVRTC compiles with --fmad=false, the emulator with -ffp-contract=off,
so +, -, *, /, sqrtf, fmaf and comparisons round identically on both).

    linear_forward / linear_backward with identity and ReLU (no transcendental function),
        single pass and split-K, at the training shapes of 784-200-Z (batch 100) and odd ones
    adam_update (given one sched: p, m and v for any betas, and the NumPy twin's bits too)
    schedule_step (double libm, rounded to float32: an ulp survives with probability ~2^-28)
    grad_norm_partials and grad_clip_scale (double sums over fixed trees)
    gather_rows (binarized: Philox words and uniforms are integer work) and end_step

A difference here is either a contraction the policy missed or a race (a result that depends
on thread or block timing) -- the emulator runs without either.  All tests are marked `gpu`
and skip where CuPy sees no GPU; benchmarks/gpu_first_look.py also runs this file under
compute-sanitizer (memcheck, racecheck), which is why its shapes are the training ones.
"""
import numpy as np
import pytest

from cupyvae import optim
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host
from cupyvae.schedules import SCHED_SIZE, hyper_array, schedule_step
from cupyvae.training import TrainingOptions
from conftest import cuda_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible to CuPy")]

BACKENDS = ("emulated", "cuda")
# (B, I, O): the 784-200-Z layers at batch 100 (the encoder's first layer and the decoder's
# dx are split-K shapes), a latent layer, and an odd one.
SHAPES = [(100, 784, 200), (100, 200, 784), (100, 200, 4), (37, 65, 33), (1, 784, 200)]


def layer(shape, seed):
    rng = np.random.default_rng(seed)
    batch, inputs, outputs = shape
    x = np.maximum(rng.standard_normal((batch, inputs)), 0).astype(np.float32)  # ReLU outputs
    w = (rng.standard_normal((inputs, outputs)) / np.sqrt(inputs)).astype(np.float32)
    b = (0.1 * rng.standard_normal(outputs)).astype(np.float32)
    da = rng.standard_normal((batch, outputs)).astype(np.float32)
    return x, w, b, da


def same_bits(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    differ = got.view(np.uint32) != want.view(np.uint32)
    if differ.any():
        first = np.argwhere(differ)[:5].tolist()
        pytest.fail(f"{name}: {int(differ.sum())} of {differ.size} elements differ between GPU "
                    f"and emulator; first at {first}: GPU {got[tuple(first[0])]!r}, emulator "
                    f"{want[tuple(first[0])]!r}", pytrace=False)


def linear_outputs(backend, shape, activation, split):
    x, w, b, da = (to_device(a, backend) for a in layer(shape, sum(shape)))
    batch, inputs, outputs = shape
    workspace = ops.linear_workspace(backend) if split else None
    y = to_device(np.full((batch, outputs), np.nan, np.float32), backend)
    dw = to_device(np.full((inputs, outputs), np.nan, np.float32), backend)
    db = to_device(np.full(outputs, np.nan, np.float32), backend)
    dx = to_device(np.full((batch, inputs), np.nan, np.float32), backend)
    run([ops.linear_forward(x, w, b, activation, y, workspace=workspace),
         ops.linear_backward(x, w, da, activation, dw, db, dx, workspace=workspace)], backend)
    return {name: to_host(a) for name, a in dict(y=y, dw=dw, db=db, dx_pre=dx).items()}


@pytest.mark.parametrize("split", [False, True], ids=["single-pass", "split-k"])
@pytest.mark.parametrize("activation", ["identity", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_kernels_give_the_emulator_bits(shape, activation, split):
    gpu, emulator = (linear_outputs(backend, shape, activation, split) for backend in BACKENDS)
    for name in gpu:
        same_bits(f"{name} {shape} {activation}", gpu[name], emulator[name])


def test_split_k_is_deterministic_on_the_gpu():
    """Ten launches of the split GEMM: the same bits whatever block finishes last."""
    results = [linear_outputs("cuda", (100, 784, 200), "relu", True)["y"] for _ in range(10)]
    for again in results[1:]:
        same_bits("split-K y across launches", again, results[0])


def adam_state(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.05, n).astype(np.float32), rng.normal(0, 1e-3, n).astype(np.float32),
            rng.normal(0, 1e-4, n).astype(np.float32), (rng.random(n) * 1e-6).astype(np.float32))


def adam_after(backend, state, scheds):
    """p, m, v after one adam_update per entry of `scheds` (the host twin's schedule values,
    so both backends read the very same sched)."""
    p, g, m, v = (to_device(a.copy(), backend) for a in state)
    sched = to_device(np.zeros(SCHED_SIZE, np.float32), backend)
    launch = ops.adam_update(p, g, m, v, sched)
    for values in scheds:
        sched[...] = to_device(values, backend)
        run(launch, backend)
    return to_host(p), to_host(m), to_host(v)


def host_scheds(steps, **settings):
    """The schedule twin's sched for steps 0..steps-1 (cupyvae.schedules.schedule_step)."""
    adam = optim.Adam(**{k: settings[k] for k in ("lr", "beta1", "beta2", "eps")})
    hyper = hyper_array(TrainingOptions(lr=settings["lr"],
                                        weight_decay=settings["weight_decay"]), adam)
    return [schedule_step(np.array([s, 0], np.uint32), hyper) for s in range(steps)]


@pytest.mark.parametrize("settings", [
    dict(lr=1e-3, beta1=0.0, beta2=0.0, eps=1e-8, weight_decay=1e-4),
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)])
def test_adam_gives_the_emulator_bits(settings):
    """Given the same sched, every operation of the update is IEEE arithmetic (the products
    __fmul_rn, division and sqrtf correctly rounded): p, m and v bit for bit, for any betas
    (n = 300003: not a multiple of any block), and the NumPy twin's bits too."""
    state = adam_state(300_003, 1)
    scheds = host_scheds(3, **settings)
    gpu, emulator = (adam_after(backend, state, scheds) for backend in BACKENDS)
    twin = [a.copy() for a in (state[0], state[2], state[3])]
    for sched in scheds:
        optim.adam_update(twin[0], state[1], twin[1], twin[2], sched)
    for name, a, c, t in zip("pmv", gpu, emulator, twin):
        same_bits(f"adam {name}", a, c)
        same_bits(f"adam {name} vs the NumPy twin", a, t)


def test_schedule_step_gives_the_emulator_bits():
    """schedule_step in double, rounded to float32 once per value: CUDA's double cos, expm1
    and log1p may differ from glibc's by an ulp, which survives the rounding with a
    probability of ~2^-28 per value (kernels/schedule.cu), so the bits must agree."""
    options = TrainingOptions(lr=3e-3, lr_schedule="cosine", lr_warmup_steps=7,
                              lr_decay_steps=50, lr_min=1e-4, kl_weight=0.5, kl_warmup_steps=9,
                              weight_decay=1e-3)
    hyper = hyper_array(options, optim.Adam())
    out = {}
    for backend in BACKENDS:
        counters = to_device(np.zeros(2, np.uint32), backend)
        sched = to_device(np.zeros(SCHED_SIZE, np.float32), backend)
        hyper_d = to_device(hyper, backend)
        rows = []
        for step in (0, 1, 6, 7, 8, 30, 56, 57, 1000, 2 ** 32 - 1):
            counters[...] = to_device(np.array([step, 0], np.uint32), backend)
            run(ops.schedule_step(counters, hyper_d, sched), backend)
            rows.append(np.array(to_host(sched)))
        out[backend] = np.stack(rows)
    same_bits("sched", out["cuda"], out["emulated"])


def test_gradient_clipping_gives_the_emulator_bits():
    """grad_norm_partials and grad_clip_scale: double squares and sums over fixed trees (no
    atomics), so the norm and the scale are the same bits on both, and the NumPy twin's.
    n: the flat buffer of 784-200-2 (every block full, threads looping), plus an odd tail."""
    n = 2 * (784 * 200 + 200) + 200 * 4 + 4 + 2 * 200 + 200 * 784 + 784 + 3
    g = np.random.default_rng(5).normal(0, 1e-2, n).astype(np.float32)
    hyper = hyper_array(TrainingOptions(clip_norm=0.5), optim.Adam())
    out = {}
    for backend in BACKENDS:
        partials = to_device(np.zeros(optim.grad_norm_blocks(n)), backend)
        sched = to_device(np.zeros(SCHED_SIZE, np.float32), backend)
        hyper_d = to_device(hyper, backend)
        run([ops.grad_norm_partials(to_device(g, backend), partials),
             ops.grad_clip_scale(partials, hyper_d, sched)], backend)
        out[backend] = to_host(partials), to_host(sched)
    same_bits("grad-norm partials", out["cuda"][0], out["emulated"][0])   # float64: 2 words each
    same_bits("clip scale and norm", out["cuda"][1], out["emulated"][1])
    twin = optim.grad_clip_scale(optim.grad_norm_partials(g, np.zeros(optim.grad_norm_blocks(n))),
                                 hyper, np.zeros(SCHED_SIZE, np.float32))
    same_bits("clip scale and norm vs the NumPy twin", out["cuda"][1], twin)


def test_step_glue_gives_the_emulator_bits():
    """gather_rows with binarization (Philox words and exact uniforms), then end_step's fixed
    reduction tree: the same bits, the same counters."""
    rng = np.random.default_rng(3)
    data = rng.random((1000, 784), dtype=np.float32)
    perm = rng.permutation(1000).astype(np.int32)
    nll = rng.uniform(50, 300, 100).astype(np.float32)
    kl = rng.uniform(0, 30, 100).astype(np.float32)
    out = {}
    for backend in BACKENDS:
        counters = to_device(np.array([77, 3], np.uint32), backend)
        xb = to_device(np.full((100, 784), np.nan, np.float32), backend)
        losses = to_device(np.full(10, np.nan, np.float32), backend)
        run([ops.gather_rows(to_device(data, backend), to_device(perm, backend), counters, 100,
                             True, 2 ** 33 + 5, xb),
             ops.end_step(to_device(nll, backend), to_device(kl, backend),
                          to_device(np.array([0.7], np.float32), backend), counters, losses)],
            backend)
        out[backend] = {"xb": to_host(xb), "losses": to_host(losses), "counters": to_host(counters)}
    for name in out["cuda"]:
        same_bits(name, out["cuda"][name], out["emulated"][name])


# ----------------------------------------------- the rest of a step, at the training shapes
# These use expf / log1pf / logf / cosf, whose CUDA and host versions differ by 1-2 ulp:
# GPU and emulator agree to a few ulp, not bitwise.  They are here so that the sanitizer run
# of this file covers every kernel of the training step at the shapes training uses.
ULP_RTOL = 1e-5          # ~80 ulp of float32: a few ulp per function, summed over a row


def close(name, got, want, scale):
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= ULP_RTOL * scale), f"{name}: max error {err.max():.3g} vs {ULP_RTOL * scale}"


@pytest.mark.parametrize("likelihood, width", [("bernoulli", 784), ("gaussian_likelihood", 1568)])
def test_likelihood_kernels_at_the_training_shape(likelihood, width):
    rng = np.random.default_rng(4)
    raw = rng.normal(0, 2, (100, width)).astype(np.float32)
    x = rng.random((100, 784), dtype=np.float32)
    out = {}
    for backend in BACKENDS:
        nll = to_device(np.full(100, np.nan, np.float32), backend)
        draw = to_device(np.full_like(raw, np.nan), backend)
        run(getattr(ops, f"{likelihood}_nll")(to_device(raw, backend), to_device(x, backend),
                                              0.01, nll, draw), backend)
        out[backend] = to_host(nll), to_host(draw)
    close("nll", out["cuda"][0], out["emulated"][0], np.abs(out["emulated"][0]).max())
    close("draw", out["cuda"][1], out["emulated"][1], np.abs(out["emulated"][1]).max())


@pytest.mark.parametrize("z_dim", [2, 20])
def test_posterior_kernels_at_the_training_shape(z_dim):
    rng = np.random.default_rng(5)
    qraw = rng.normal(0, 1, (100, 2 * z_dim)).astype(np.float32)
    dz = rng.normal(0, 1, (100, z_dim)).astype(np.float32)
    out = {}
    for backend in BACKENDS:
        counters = to_device(np.array([9, 0], np.uint32), backend)
        z, kl = (to_device(np.full(s, np.nan, np.float32), backend) for s in ((100, z_dim), 100))
        dq = to_device(np.full((100, 2 * z_dim), np.nan, np.float32), backend)
        sample = to_device(np.full((100, z_dim), np.nan, np.float32), backend)
        q = to_device(qraw, backend)
        run([ops.gaussian_posterior_forward(q, counters, 7, 0, z, kl),
             ops.gaussian_posterior_backward(q, to_device(dz, backend), counters, 7, 0, 0.01,
                                             to_device(np.array([0.5], np.float32), backend), dq),
             ops.gaussian_posterior_sample(q, 7, 9, 0, sample)], backend)
        out[backend] = [to_host(a) for a in (z, kl, dq, sample)]
    for name, got, want in zip(("z", "kl", "dqraw", "sample"), out["cuda"], out["emulated"]):
        close(name, got, want, max(np.abs(want).max(), 1.0))
    same_bits("sample vs forward z on the GPU", out["cuda"][3], out["cuda"][0])


@pytest.mark.parametrize("execution", ["eager", "graph"])
def test_a_training_epoch_tracks_the_emulator(execution):
    """784-200-2 at batch 100, five steps: every launch of the plan at the training shapes,
    on the GPU (eagerly, or captured) and on the emulator, from the same init."""
    import cupyvae

    x = (np.random.default_rng(6).random((500, 784)) < 0.3).astype(np.float32)
    losses, params = {}, {}
    for backend in BACKENDS:
        vae = cupyvae.VAE((28, 28), latent_dim=2, hidden=(200,), device=backend, seed=3,
                          execution=execution if backend == "cuda" else "eager")
        losses[backend] = vae.fit(x, epochs=1, batch_size=100, binarize=True)["train_loss"]
        params[backend] = vae._executor.host_flat()
    np.testing.assert_allclose(losses["cuda"], losses["emulated"], rtol=ULP_RTOL)
    close("parameters after 5 steps", params["cuda"], params["emulated"], 0.1)
