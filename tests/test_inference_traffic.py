"""Inference on the kernel executors takes whole arrays: the host uploads what a call needs,
the rows go through the network in chunks on the device, and the results are read back
once per call, after every launch -- never between chunks.  The noise of chunk c is keyed
by c on every executor, so chunked results agree across devices; and the NumPy path gives
the very numbers of the per-chunk loops it replaced."""
import numpy as np
import pytest
from scipy.special import logsumexp

import cupyvae
from cupyvae import model as model_module
from cupyvae import philox
from cupyvae.cuda import executor as kernel_executor

CHUNK = 7            # 23 rows: chunks of 7, 7, 7 and 2
SHAPE = (5, 7)
TOLERANCE = 1e-5     # emulator vs NumPy: summation order and a few ulp of expf/logf/cosf


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(model_module, "EVAL_CHUNK", CHUNK)


def trained_pair(**kw):
    args = dict(data_shape=SHAPE, latent_dim=3, hidden=(9,), seed=5, **kw)
    ref, dev = cupyvae.VAE(**args, device="cpu"), cupyvae.VAE(**args, device="emulated")
    x = data(23)
    ref.fit(x, epochs=1, batch_size=5)
    dev._executor.load_flat(ref.flat_params)
    return ref, dev, x


def data(n, seed=0):
    return (np.random.default_rng(seed).random((n, *SHAPE)) < 0.4).astype(np.float32)


@pytest.fixture
def traffic(monkeypatch):
    """The kernel executor's uploads, launches and reads, in order."""
    log = []

    def wrap(name, function):
        def logged(*args, **kwargs):
            log.append(name)
            return function(*args, **kwargs)
        monkeypatch.setattr(kernel_executor, name, logged)

    wrap("to_device", kernel_executor.to_device)
    wrap("run", kernel_executor.run)
    wrap("to_host", kernel_executor.to_host)
    return log


CALLS = {
    "encode": lambda vae, x: vae.encode(x),
    "encode(sample)": lambda vae, x: vae.encode(x, sample=True),
    "decode": lambda vae, x: vae.decode(np.linspace(-1, 1, 3 * 23, dtype=np.float32).reshape(23, 3)),
    "loss": lambda vae, x: vae.loss(x),
    "sample": lambda vae, x: vae.sample(23),
}


@pytest.mark.parametrize("call", CALLS)
def test_results_are_read_once_after_every_chunk_ran(small_chunks, traffic, call):
    _, dev, x = trained_pair()
    traffic.clear()
    CALLS[call](dev, x)
    launches = [i for i, what in enumerate(traffic) if what == "run"]
    reads = [i for i, what in enumerate(traffic) if what == "to_host"]
    uploads = [i for i, what in enumerate(traffic) if what == "to_device"]
    first, last = min(launches), max(launches)
    assert len(launches) >= 4, f"{call}: the 23 rows should run as 4 chunks: {traffic}"
    assert not [i for i in reads + uploads if first < i < last], \
        f"{call}: a read or upload between chunks: {traffic}"
    assert not [i for i in uploads if i > last], f"{call}: an upload after the work: {traffic}"
    # The result: one array.
    assert len([i for i in reads if i > last]) == 1, \
        f"{call}: {traffic}"


@pytest.mark.parametrize("call", CALLS)
def test_chunked_results_agree_across_executors(small_chunks, call):
    """Chunk c keys its noise by c on both executors: the same draws, to a few ulp."""
    ref, dev, x = trained_pair()
    got, want = np.asarray(CALLS[call](dev, x), np.float64), np.asarray(CALLS[call](ref, x), np.float64)
    scale = max(float(np.abs(want).max()), 1e-3)
    assert np.abs(got - want).max() <= TOLERANCE * scale, f"{call}: {np.abs(got - want).max()}"


def test_chunks_draw_distinct_noise(small_chunks):
    """Rows 0 and 7 are identical but lie in chunks 0 and 1: different draws."""
    _, dev, x = trained_pair()
    x[7] = x[0]
    z = dev.encode(x, sample=True)
    assert not np.array_equal(z[0], z[7])
    np.testing.assert_array_equal(dev.encode(x)[0], dev.encode(x)[7])


# ------------------------------------------------------------------ the NumPy path is unchanged
def test_numpy_path_gives_the_numbers_of_the_old_per_chunk_loops(small_chunks):
    """The loops VAE.encode(sample=True) and VAE.loss ran before the executors took whole
    arrays, re-run here: the same bits.  (VAE.log_likelihood changed on purpose: exact log q
    from the noise, float64, noise keyed per example: tests/test_log_likelihood.py.)"""
    ref, _, x = trained_pair()
    seed, z_dim = ref.config.seed, ref.config.latent_dim
    ex, post, lik, prior = ref._executor, ref.spec.posterior, ref.spec.likelihood, ref.spec.prior

    draws, rows, total = [], [], 0.0
    for c, start in enumerate(range(0, len(x), CHUNK)):
        chunk = x[start:start + CHUNK].reshape(-1, 35)
        eps = philox.normal(seed, c, len(chunk), z_dim, philox.STREAM_POSTERIOR)
        draws.append(post.rsample(ex.encode_raw(chunk), eps))
        rows.append(ex.loss_rows(chunk, c, philox.STREAM_EVAL))
        total += float(rows[-1].sum())
    np.testing.assert_array_equal(ref.encode(x, sample=True), np.concatenate(draws))
    np.testing.assert_array_equal(ex.loss_rows(x.reshape(23, -1), 0, philox.STREAM_EVAL, CHUNK),
                                  np.concatenate(rows))
    # The mean now sums the rows in float64 at once; the old loop summed each chunk in the
    # rows' float32 and added the chunks: the same terms, with at most one float32 rounding
    # per addition (23 rows: 23 2^-24 of the sum of |rows|) between the two.
    bound = 23 * 2.0 ** -24 * np.abs(np.concatenate(rows)).sum() / len(x)
    assert abs(ref.loss(x) - total / len(x)) <= bound
    assert ref.loss(x) == np.concatenate(rows).astype(np.float64).sum() / len(x)


def test_the_standard_normal_prior_is_drawn_on_the_device(traffic):
    """VAE.sample on a kernel device: z comes from the normal prior's elementwise kernel
    (nothing uploaded), and matches the host's draws."""
    ref, dev, _ = trained_pair()
    assert dev.spec.prior.kernel == "normal"
    traffic.clear()
    got = dev.sample(11)
    assert "to_device" not in traffic, traffic
    np.testing.assert_allclose(got, ref.sample(11), rtol=TOLERANCE, atol=TOLERANCE)


# ------------------------------------------------------------------ one chunking, validated
EXECUTOR_CALLS = {
    "loss_rows": lambda ex, x, chunk: ex.loss_rows(x, 0, philox.STREAM_POSTERIOR, chunk),
    "encode_raw": lambda ex, x, chunk: ex.encode_raw(x, chunk),
    "decode_raw": lambda ex, x, chunk: ex.decode_raw(np.zeros((len(x), 3), np.float32), chunk),
    "posterior_sample": lambda ex, x, chunk: ex.posterior_sample(x, 0, philox.STREAM_POSTERIOR, chunk),
}


@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("call", EXECUTOR_CALLS)
@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_a_chunk_that_is_not_a_positive_int_is_refused_on_every_executor(device, call, chunk):
    ex = cupyvae.VAE(data_shape=SHAPE, latent_dim=3, hidden=(9,), seed=5, device=device)._executor
    with pytest.raises(ValueError, match=f"chunk must be a positive number of rows or None, got {chunk}"):
        EXECUTOR_CALLS[call](ex, data(5).reshape(5, SHAPE[0] * SHAPE[1]), chunk)


@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("call", EXECUTOR_CALLS)
def test_no_rows_is_refused_on_every_executor(device, call):
    ex = cupyvae.VAE(data_shape=SHAPE, latent_dim=3, hidden=(9,), seed=5, device=device)._executor
    with pytest.raises(ValueError, match="inference needs at least one row, got 0"):
        EXECUTOR_CALLS[call](ex, np.zeros((0, SHAPE[0] * SHAPE[1]), np.float32), None)


@pytest.mark.parametrize("n, chunk, sizes", [(5, None, [5]), (5, 2, [2, 2, 1]), (5, 5, [5]),
                                             (5, 9, [5]), (1, 1, [1]), (7, np.int64(3), [3, 3, 1])])
def test_chunk_slices_cover_every_row_once_in_order(n, chunk, sizes):
    from cupyvae.executors import chunk_slices
    got = list(chunk_slices(n, chunk))
    assert [c for c, _ in got] == list(range(len(sizes)))
    assert [s.stop - s.start for _, s in got] == sizes
    assert np.concatenate([np.arange(n)[s] for _, s in got]).tolist() == list(range(n))
