"""cupyvae.plots: every plot is written, has its documented pixel size and shows something."""
from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import pytest

import cupyvae
from cupyvae import plots

SHAPE = (8, 8)


def make_images(n: int, shape=SHAPE, seed: int = 0):
    """Noisy copies of two patterns (top half bright, left half bright), with labels."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((2, *shape), np.float32)
    patterns[0, :shape[0] // 2] = 1
    patterns[1, :, :shape[1] // 2] = 1
    labels = rng.integers(0, 2, n)
    x = np.clip(patterns[labels] + rng.normal(0, 0.1, (n, *shape)), 0, 1).astype(np.float32)
    return x, labels


def trained(shape=SHAPE, latent_dim=2, epochs=3):
    x, _ = make_images(120, shape)
    model = cupyvae.VAE(shape, latent_dim=latent_dim, hidden=(16,), device="cpu", seed=1)
    model.fit(x[:100], x[100:], epochs=epochs, batch_size=20, lr=1e-2)
    return model


@pytest.fixture(scope="module")
def model():
    return trained()


@pytest.fixture(scope="module")
def data():
    return make_images(60, seed=5)


def pixels(path):
    assert path.is_file(), f"{path} was not written"
    return mpimg.imread(path)[..., :3]


def assert_varied(image, at_least=0.05):
    assert image.std() > at_least, "the picture is (nearly) one colour"


def mosaic_side_px(tiles: int, tile_px: int, pad: int) -> int:
    """A mosaic side of `tiles` images, drawn at its integer zoom."""
    side = tiles * (tile_px + pad) - pad
    return side * plots.pixel_zoom((side, side))


def test_latent_scatter_has_its_figure_size_and_colours(model, data, tmp_path):
    x, y = data
    image = pixels(plots.latent_scatter(model, x, y, tmp_path / "latent.png",
                                        label_names=["top", "left"]))
    assert image.shape[:2] == (600, 750)
    assert_varied(image)
    coloured = np.abs(image[..., 0] - image[..., 2]) > 0.2   # the labelled points are not grey
    assert coloured.sum() > 50


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_latent_scatter_handles_other_latent_sizes(latent_dim, data, tmp_path):
    x, y = data
    model = trained(latent_dim=latent_dim, epochs=1)
    for labels in (y, None):
        image = pixels(plots.latent_scatter(model, x, labels, tmp_path / "latent.png"))
        assert image.shape[:2] == (600, 750)
        assert_varied(image)


def test_latent_scatter_with_many_classes_uses_a_colour_bar(model, tmp_path):
    x, _ = make_images(80)
    labels = np.arange(80) % 15
    image = pixels(plots.latent_scatter(model, x, labels, tmp_path / "latent.png"))
    assert image.shape[:2] == (600, 750)


def test_manifold_grid_is_the_decoded_grid_at_an_integer_zoom(model, tmp_path):
    image = pixels(plots.manifold_grid(model, tmp_path / "manifold.png", n=6))
    side = mosaic_side_px(6, 8, pad=0)
    margins = 2 * plots.MARGIN_PX + plots.LINE_PX       # plus the axis label on each side
    assert image.shape[1] == side + margins
    assert image.shape[0] == side + margins + plots.LINE_PX    # and a one-line title
    assert_varied(image)


def test_manifold_grid_keeps_the_image_aspect_of_the_data(tmp_path):
    model = trained(shape=(12, 8), epochs=1)
    image = pixels(plots.manifold_grid(model, tmp_path / "manifold.png", n=5))
    assert image.shape[0] > image.shape[1]     # 12 x 8 images make a tall grid


def test_manifold_grid_says_which_dimensions_it_varies():
    assert "z3 fixed at 0" in plots._manifold_title(3, True, 20)
    assert "z3–z5 fixed at 0" in plots._manifold_title(5, True, 20)
    assert "fixed" not in plots._manifold_title(2, True, 20)


def test_reconstructions_show_originals_above_reconstructions(model, data, tmp_path):
    x, _ = data
    image = pixels(plots.reconstructions(model, x, tmp_path / "rec.png", n=4))
    height = 2 * 9 - 1
    assert image.shape[0] == height * plots.pixel_zoom((height, 4 * 9 - 1)) \
        + 2 * plots.MARGIN_PX + plots.LINE_PX
    assert_varied(image)


def test_samples_grid_has_its_size(model, tmp_path):
    image = pixels(plots.samples(model, tmp_path / "samples.png", n=16))
    side = mosaic_side_px(4, 8, pad=1)
    assert image.shape[:2] == (side + 2 * plots.MARGIN_PX + plots.LINE_PX, side + 2 * plots.MARGIN_PX)
    assert_varied(image)


def test_loss_curves(model, tmp_path):
    image = pixels(plots.loss_curves(model.history, tmp_path / "loss.png"))
    assert image.shape[:2] == (450, 700)
    assert_varied(image, 0.02)
    with pytest.raises(ValueError, match="no epochs"):
        plots.loss_curves({"epoch": []}, tmp_path / "empty.png")


def test_write_all_draws_every_plot_of_a_dataset(model, tmp_path):
    x, y = make_images(50, seed=7)
    dataset = SimpleNamespace(name="two-patterns", x_train=x[:30], y_train=y[:30],
                              x_test=x[30:], y_test=y[30:])
    written = plots.write_all(model, dataset, model.history, tmp_path)
    assert sorted(path.name for path in written) == sorted(plots.PLOT_FILES.values())
    for path in written:
        assert_varied(pixels(path), 0.02)


def test_non_image_data_are_drawn_as_heat_strips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (60, 12)).astype(np.float32)
    model = cupyvae.VAE((12,), latent_dim=2, hidden=(8,), device="cpu")
    model.fit(x, epochs=1, batch_size=20)
    written = plots.write_all(model, (x, None), model.history, tmp_path)
    assert len(written) == 5
    for path in written:
        assert_varied(pixels(path), 0.02)
    assert_varied(pixels(plots.save_explorer(model, tmp_path / "explore.png")), 0.02)


def test_explorer_sliders_redraw_the_decoded_image(model):
    figure, sliders = plots.explorer_figure(model)
    assert [slider.label.get_text() for slider in sliders] == ["z1", "z2"]
    image = figure.axes[0].images[0]
    before = np.array(image.get_array())
    sliders[0].set_val(2.5)
    after = np.array(image.get_array())
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, model.decode(np.array([[2.5, 0.0]]))[0], rtol=1e-6)


def test_explorer_caps_the_sliders_and_says_so(tmp_path):
    model = cupyvae.VAE(SHAPE, latent_dim=12, hidden=(8,), device="cpu")
    figure, sliders = plots.explorer_figure(model)
    assert len(sliders) == plots.MAX_SLIDERS
    assert "z11–z12 stay at 0" in figure._suptitle.get_text()
    assert_varied(pixels(plots.save_explorer(model, tmp_path / "explore.png")), 0.02)


def test_image_grid_of_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    image = pixels(plots.image_grid(rng.uniform(0, 1, (4, 6, 6, 3)), tmp_path / "rgb.png"))
    side = mosaic_side_px(2, 6, pad=1)
    assert image.shape[:2] == (side + 2 * plots.MARGIN_PX, side + 2 * plots.MARGIN_PX)
