"""The layer initialisation schemes (VAEConfig.init)."""
import numpy as np
import pytest

import cupyvae
from cupyvae.config import VAEConfig
from cupyvae.initialization import INITIALIZATIONS
from cupyvae.options import OptionError


def test_pytorch_is_the_default():
    assert cupyvae.VAE((6,), latent_dim=2, hidden=(5,)).config.init == "pytorch"
    assert VAEConfig(data_shape=(6,)).init == "pytorch"


def test_glorot_draws_what_it_always_drew():
    model = cupyvae.VAE((28, 28), latent_dim=2, hidden=(200,), seed=11, init="glorot")
    assert model.config.init == "glorot"
    rng = np.random.default_rng(11)
    for name, (n_in, n_out) in (("encoder.0", (784, 200)), ("encoder.1", (200, 4)),
                                ("decoder.0", (2, 200)), ("decoder.1", (200, 784))):
        limit = np.sqrt(6.0 / (n_in + n_out))
        np.testing.assert_array_equal(model.params[f"{name}.weight"],
                                      rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32))
        assert not model.params[f"{name}.bias"].any()


def test_pytorch_scheme_bounds_weights_and_biases_by_one_over_sqrt_fan_in():
    model = cupyvae.VAE((28, 28), latent_dim=2, hidden=(200,), seed=11, init="pytorch")
    for name, n_in in (("encoder.0", 784), ("encoder.1", 200), ("decoder.0", 2), ("decoder.1", 200)):
        bound = 1 / np.sqrt(n_in)
        for part in ("weight", "bias"):
            values = model.params[f"{name}.{part}"].astype(np.float64)
            assert np.abs(values).max() <= bound, (name, part)
            # U(-a, a) has standard deviation a / sqrt(3); with >= 200 draws the sample
            # standard deviation is within 15% of it (about 4 standard errors at n = 200).
            if values.size >= 200:
                assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.15), (name, part)


def test_schemes_differ_and_are_saved_in_the_config_and_the_checkpoint(tmp_path):
    glorot = cupyvae.VAE((6,), latent_dim=2, hidden=(5,), seed=1, init="glorot")
    torch_like = cupyvae.VAE((6,), latent_dim=2, hidden=(5,), seed=1, init="pytorch")
    assert not np.array_equal(glorot.flat_params, torch_like.flat_params)
    assert VAEConfig.from_json(torch_like.config.to_json()).init == "pytorch"
    torch_like.save(tmp_path / "m.safetensors")
    again = cupyvae.load(tmp_path / "m.safetensors")
    assert again.config.init == "pytorch"
    np.testing.assert_array_equal(again.flat_params, torch_like.flat_params)


def test_a_config_saved_before_init_existed_reads_as_glorot():
    content = VAEConfig(data_shape=(6,)).to_dict()
    del content["init"]
    assert VAEConfig.from_dict(content).init == "glorot"


@pytest.mark.parametrize("bad", ["xavier", "", 3, None])
def test_unknown_schemes_are_refused_listing_the_known_ones(bad):
    with pytest.raises(OptionError, match="init"):
        VAEConfig(data_shape=(6,), init=bad)
    assert INITIALIZATIONS.names() == ["glorot", "pytorch"]
