"""GPU against emulator, BIT FOR BIT, where the parity policy says the bits must agree
(cupyvae.cuda.loader: NVRTC compiles with --fmad=false, the emulator with -ffp-contract=off,
so +, -, *, /, sqrtf, fmaf and comparisons round identically on both).

    linear_forward / linear_backward with identity and ReLU (no transcendental function),
        single pass and split-K, at the training shapes of 784-200-Z (batch 100) and odd ones
    adam_update: m and v always; p too when the bias corrections are exact (beta = 0),
        otherwise within the ulps of CUDA's vs the host's expm1f/log1pf
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


def adam_after(backend, state, steps, **hyper):
    p, g, m, v = (to_device(a.copy(), backend) for a in state)
    counters = to_device(np.array([0, 0], np.uint32), backend)
    for step in range(steps):
        counters[...] = to_device(np.array([step, 0], np.uint32), backend)
        run(ops.adam_update(p, g, m, v, counters, **hyper), backend)
    return to_host(p), to_host(m), to_host(v)


def test_adam_with_exact_bias_corrections_gives_the_emulator_bits():
    """beta1 = beta2 = 0: c1 = c2 = 1 exactly on both sides (expm1f(-inf) = -1), so every
    remaining operation is IEEE arithmetic: p, m and v bit for bit (n = 300003: float4 body
    and scalar tail)."""
    state = adam_state(300_003, 1)
    hyper = dict(lr=1e-3, beta1=0.0, beta2=0.0, eps=1e-8, weight_decay=1e-4)
    gpu, emulator = (adam_after(backend, state, 3, **hyper) for backend in BACKENDS)
    for name, a, c in zip("pmv", gpu, emulator):
        same_bits(f"adam {name}", a, c)


def test_adam_moments_match_bitwise_and_parameters_to_the_libm_ulps():
    """Standard betas: m and v are pure arithmetic (bitwise).  p moves by step_size * m /
    (sqrt(v) + eps_hat), whose step_size comes from expm1f/log1pf: CUDA's and the host's differ
    by at most 2 ulp each, so c1, c2 and step_size by at most ~8 ulp (5e-7 relative); p may
    differ by that fraction of its update plus one rounding of p."""
    state = adam_state(4099, 2)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    (p_gpu, m_gpu, v_gpu), (p_emu, m_emu, v_emu) = (adam_after(b, state, 1, **hyper)
                                                    for b in BACKENDS)
    same_bits("adam m", m_gpu, m_emu)
    same_bits("adam v", v_gpu, v_emu)
    update = np.abs(p_emu.astype(np.float64) - state[0])
    bound = 5e-7 * update + np.spacing(np.abs(p_emu))
    assert np.all(np.abs(p_gpu.astype(np.float64) - p_emu) <= bound), "adam p beyond the libm ulps"
    twin = [a.copy() for a in (state[0], state[2], state[3])]
    optim.adam_update(twin[0], state[1], twin[1], twin[2], np.array([0, 0], np.uint32), **hyper)
    np.testing.assert_allclose(p_gpu, twin[0], rtol=1e-6, err_msg="adam p vs the NumPy twin")


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
             ops.end_step(to_device(nll, backend), to_device(kl, backend), counters, losses)],
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
             ops.gaussian_posterior_backward(q, to_device(dz, backend), counters, 7, 0, 0.01, dq),
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
