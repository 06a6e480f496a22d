"""The notebook latent explorer (cupyvae.explore), driven without a display."""
import sys

import numpy as np
import pytest

import cupyvae
from cupyvae.notebook import MissingExtra

pytest.importorskip("ipywidgets")


def trained_model(latent_dim: int, data_shape=(6, 5)):
    rng = np.random.default_rng(0)
    x = (rng.random((60, *data_shape)) < 0.3).astype(np.float32)
    model = cupyvae.VAE(data_shape, latent_dim=latent_dim, hidden=(8,), seed=2)
    model.fit(x, epochs=1, batch_size=20)
    return model, x


@pytest.mark.parametrize("latent_dim,expected_sliders", [(2, 2), (3, 3), (20, 10)])
def test_one_slider_per_latent_dimension_up_to_the_cap(latent_dim, expected_sliders):
    model, _ = trained_model(latent_dim)
    panel = cupyvae.explore(model)
    assert len(panel.sliders) == expected_sliders
    assert [s.description for s in panel.sliders[:2]] == ["z1", "z2"]
    assert panel.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_moving_a_slider_decodes_the_new_point():
    model, _ = trained_model(2)
    panel = cupyvae.explore(model, names=("pose", "expression"))
    before = panel.image.value
    panel.sliders[1].value = 2.5
    assert panel.z[1] == pytest.approx(2.5)
    assert panel.image.value != before
    from cupyvae.notebook import decoded_png
    assert panel.image.value == decoded_png(model, np.array([0.0, 2.5], np.float32))
    assert panel.sliders[0].description == "pose"


def test_with_data_the_sliders_start_at_the_codes_mean_and_cover_them():
    from cupyvae.plots import slider_ranges
    model, x = trained_model(2)
    codes = model.encode(x)
    panel = cupyvae.explore(model, x=x)
    ranges = slider_ranges(codes, codes.mean(axis=0))      # the CLI explorer's spans
    for i, slider in enumerate(panel.sliders):
        assert slider.value == pytest.approx(codes[:, i].mean(), abs=slider.step)
        assert (slider.min, slider.max) == tuple(ranges[i])
        assert slider.min <= np.quantile(codes[:, i], 0.005) and slider.max >= np.quantile(codes[:, i], 0.995)
        assert slider.min <= -3 and slider.max >= 3


def test_non_image_data_are_drawn_as_a_line():
    model, _ = trained_model(2, data_shape=(7,))
    assert cupyvae.explore(model).image.value[:4] == b"\x89PNG"


def test_without_ipywidgets_the_error_names_the_extra(monkeypatch):
    model, _ = trained_model(2)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)     # import ipywidgets now fails
    with pytest.raises(MissingExtra, match=r"pip install 'cupyvae\[notebook\]'"):
        cupyvae.explore(model)
