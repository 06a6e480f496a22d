"""The learnable priors' pass as a sequence of kernel launches, against the NumPy prior pass
(cupyvae.reference: prior_log_prob, prior_log_prob_dz, add_prior_param_grads).

`prior_pass_launches` is the launch recipe a kernel step plan uses (see the report of issue
8, stage 1): for `vamp` the encoder runs ONCE on the batch and the K pseudo-inputs stacked
(B + K rows), so a single linear_backward per layer writes (with `=`) the sum of the
data pass's and the pseudo-input pass's weight gradients -- no `+=` GEMM, no extra buffer.
The posterior's own backward is stood in for by given values (its kernels are tested in
tests/test_kernels_gaussian.py).
"""
import numpy as np
import pytest

import cupyvae
from cupyvae import reference
from cupyvae.cuda import ops
from cupyvae.cuda.launch import run, to_device, to_host

# float32 kernels vs the float32 NumPy path: only summation order, libm ulps and (on the GPU)
# FMA contraction differ, so ~1e-7 relative per op; 1e-5 of each tensor's largest magnitude
# (the tests/test_executor.py tolerance) still fails any wrong term.
RTOL = 1e-5


def assert_tensor_close(got, want, name):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-3)
    worst = np.unravel_index(int(err.argmax()), err.shape) if err.size else ()
    assert err.max(initial=0.0) <= RTOL * scale, (
        f"{name}: max err {err.max():.3e} at {worst} (got {got[worst]:.8g}, want {want[worst]:.8g})")


def prior_pass_launches(spec, params, grads, buf, batch):
    """The prior's launches of one training step, in order.  `buf` holds the workspace:
    enc (activations, input first; B rows, or B + K for vamp), enc_grad (d pre-activation,
    same rows; enc_grad[-1][:B] is written by the posterior's backward), z, dz (holding the
    decoder's d loss / dz), g (B,) = d loss / d log p(z_b), logp, resp, and for vamp:
    logits0 (K zeros), dlogits_scratch (K,), du (K, D)."""
    encoder = spec.encoder
    vamp = "prior.pseudo_inputs" in params
    comp = buf["enc"][-1][batch:] if vamp else params["prior.components"]
    logits = buf["logits0"] if vamp else params["prior.logits"]
    forward = []
    if vamp:   # pseudo-inputs u = hardtanh(w) into the rows below the batch
        forward.append(ops.vamp_pseudo_inputs_forward(params["prior.pseudo_inputs"], buf["enc"][0][batch:]))
    forward += [ops.linear_forward(buf["enc"][i], params[f"{l.name}.weight"], params[f"{l.name}.bias"],
                                   l.activation, buf["enc"][i + 1]) for i, l in enumerate(encoder)]
    forward += [ops.mixture_prior_forward(buf["z"], logits, comp, buf["logp"], buf["resp"])]
    # ... posterior forward, decoder, likelihood, decoder backward into dz ...
    backward_z = [ops.mixture_prior_backward_z(buf["z"], comp, buf["resp"], buf["g"], buf["dz"])]
    # ... posterior backward: reads dz, writes enc_grad[-1][:B] ...
    dcomp = buf["enc_grad"][-1][batch:] if vamp else grads["prior.components"]
    dlogits = buf["dlogits_scratch"] if vamp else grads["prior.logits"]
    backward = [ops.mixture_prior_backward_params(buf["z"], logits, comp, buf["resp"], buf["g"],
                                                  dlogits, dcomp)]
    for i in reversed(range(len(encoder))):
        layer = encoder[i]
        # One fused launch per layer: dW, db over all rows (the data pass plus, for vamp, the
        # pseudo-input pass, summed with `=`) and d input; layer 0's d input only for vamp,
        # where its pseudo-input rows are d u (the data rows' part is computed and unused).
        target = buf["enc_grad"][i] if i > 0 else (buf["dx0"] if vamp else None)
        below = encoder[i - 1].activation if i > 0 else "identity"
        backward.append(ops.linear_backward(buf["enc"][i], params[f"{layer.name}.weight"],
                                            buf["enc_grad"][i + 1], below,
                                            grads[f"{layer.name}.weight"], grads[f"{layer.name}.bias"],
                                            target))
    if vamp:
        backward.append(ops.vamp_pseudo_inputs_backward(params["prior.pseudo_inputs"], buf["dx0"][batch:],
                                                        grads["prior.pseudo_inputs"]))
    return forward, backward_z, backward


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_prior_pass_launches_match_the_numpy_prior_pass(backend, prior):
    model = cupyvae.VAE((2, 3), latent_dim=3, hidden=(7, 5), activation=("tanh", "softplus"),
                        prior=prior, prior_components=4, seed=2)
    spec, batch, k = model.spec, 5, 4
    rng = np.random.default_rng(0)
    flat = model.flat_params.copy()
    flat += rng.normal(0, 0.1, flat.shape).astype(np.float32)     # non-zero biases and logits
    params = spec.layout.views(flat)
    if prior == "vamp":
        params["prior.pseudo_inputs"][...] = rng.uniform(-0.2, 1.2, (k, 6))   # some beyond the bound
    x = rng.random((batch, 6)).astype(np.float32)
    z = rng.normal(0, 1.5, (batch, 3)).astype(np.float32)
    dz_decoder = rng.normal(0, 0.1, (batch, 3)).astype(np.float32)
    dq_data = rng.normal(0, 0.1, (batch, 6)).astype(np.float32)     # the posterior backward's rows
    g = np.full(batch, -1.0 / batch, np.float32)

    # The NumPy prior pass, around a data pass that writes the encoder gradients with `=`.
    grads_ref = spec.layout.views(spec.layout.zeros())
    log_p, state = reference.prior_log_prob(spec, params, z)
    dz_ref = dz_decoder + reference.prior_log_prob_dz(spec, z, state, g)
    enc_acts = reference.mlp_forward(spec.encoder, params, x)
    reference.mlp_backward(spec.encoder, params, grads_ref, enc_acts, dq_data, need_dx=False)
    reference.add_prior_param_grads(spec, params, grads_ref, z, state, g)

    # The kernels, on one workspace.
    rows = batch + (k if prior == "vamp" else 0)
    widths = [6] + [layer.n_out for layer in spec.encoder]
    dev = lambda a: to_device(np.ascontiguousarray(a, np.float32), backend)
    params_dev = spec.layout.views(dev(flat))
    grad_flat = dev(np.full(spec.layout.size, np.nan, np.float32))   # every gradient must be written
    grads_dev = spec.layout.views(grad_flat)
    buf = {"enc": [dev(np.zeros((rows, w))) for w in widths],
           "enc_grad": [None] + [dev(np.zeros((rows, w))) for w in widths[1:]],
           "z": dev(z), "dz": dev(dz_decoder), "g": dev(g),
           "logp": dev(np.zeros(batch)), "resp": dev(np.zeros((batch, k))),
           "logits0": dev(np.zeros(k)), "dlogits_scratch": dev(np.zeros(k)), "dx0": dev(np.zeros((rows, 6)))}
    buf["enc"][0][:batch] = dev(x)
    forward, backward_z, backward = prior_pass_launches(spec, params_dev, grads_dev, buf, batch)
    run(forward + backward_z, backend)
    buf["enc_grad"][-1][:batch] = dev(dq_data)                     # the posterior backward's output
    run(backward, backend)

    assert_tensor_close(to_host(buf["logp"]), log_p, "log p(z)")
    assert_tensor_close(to_host(buf["dz"]), dz_ref, "dz")
    got = spec.layout.views(to_host(grad_flat))
    for entry in spec.layout.entries:
        if entry.name.startswith("decoder."):
            continue                                             # not this pass's
        assert_tensor_close(got[entry.name], grads_ref[entry.name], f"{prior}: d {entry.name}")
