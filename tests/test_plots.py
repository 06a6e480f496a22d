"""cupyvae.plots: every plot is written, has its documented pixel size and shows something."""
from pathlib import Path
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
    side = mosaic_side_px(6, 8, pad=1)      # a one-pixel gap keeps small images apart
    margins = 2 * plots.MARGIN_PX + plots.LINE_PX       # plus the axis label on each side
    assert image.shape[1] == side + margins
    assert image.shape[0] == side + margins + 2 * plots.LINE_PX    # and a two-line title
    assert_varied(image)


def test_manifold_grid_keeps_the_image_aspect_of_the_data(tmp_path):
    model = trained(shape=(12, 8), epochs=1)
    image = pixels(plots.manifold_grid(model, tmp_path / "manifold.png", n=5))
    assert image.shape[0] > image.shape[1]     # 12 x 8 images make a tall grid


def test_manifold_grid_says_which_dimensions_it_varies():
    def title(latent_dim, data=True):
        model = cupyvae.VAE(SHAPE, latent_dim=latent_dim, hidden=(8,), device="cpu")
        view = plots.latent_view(model, make_images(30)[0]) if data else plots.prior_view(model)
        return plots._manifold_title(view, True, 20)
    assert "z3 at 0" in title(3, data=False) and "not checked" in title(3, data=False)
    assert "z3–z5 at 0" in title(5, data=False)
    assert "PC1 × PC2 of the codes, through their mean" in title(5)
    assert title(2).startswith("Decoded manifold, 20×20: z1 × z2\n")
    assert "KS" in title(2)


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


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_loss_curves_name_the_objective_and_tick_whole_epochs(monkeypatch):
    from cupyvae.objectives import loss_name
    from cupyvae.training import TrainingOptions
    figures = drawn_figures(monkeypatch)
    one_epoch = {"epoch": [1], "train_loss": [5.0], "val_loss": [4.0]}
    plots.loss_curves(one_epoch, "loss.png", objective=loss_name(TrainingOptions(objective="iwae",
                                                                                   iw_samples=5)))
    ax = figures[-1].axes[0]
    assert legend_texts(ax) == ["train: negative IWAE bound (k = 5)",
                                "validation (test split): negative ELBO"]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]                          # one epoch is one tick, not 0.95 ... 1.05
    plots.loss_curves({**one_epoch, "epoch": [1, 2, 3], "train_loss": [3, 2, 1],
                       "val_loss": [3, 2, 1]}, "loss.png")
    ticks = figures[-1].axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)
    assert loss_name(TrainingOptions()) == "negative ELBO"
    assert loss_name(TrainingOptions(kl_weight=0.5, free_bits=0.1)) == \
        "reconstruction + β KL (β = 0.5, free bits 0.1 nats per dimension)"


def vector_model(latent_dim, d=6):
    x = np.random.default_rng(0).uniform(0, 1, (60, d)).astype(np.float32)
    model = cupyvae.VAE((d,), latent_dim=latent_dim, hidden=(8,), device="cpu", seed=0)
    model.fit(x, epochs=1, batch_size=20)
    return model, x


def test_non_image_manifold_sweeps_z1_alone_with_one_latent_and_both_axes_with_two(monkeypatch):
    figures = drawn_figures(monkeypatch)
    model, x = vector_model(latent_dim=1)
    plots.manifold_grid(model, "m.png", n=5, x=x)
    strip = figures[-1].axes[0]
    assert strip.images[0].get_array().shape == (5, 6)         # 5 steps of z1, 6 values each
    assert strip.get_ylabel().startswith("z1: ") and "top to bottom" in strip.get_ylabel()
    model, x = vector_model(latent_dim=2)
    plots.manifold_grid(model, "m.png", n=5, x=x)
    grid = figures[-1].axes[0]
    assert grid.images[0].get_array().shape == (5, 5 * 6)      # 5 x 5 cells of 6 values
    assert grid.get_xlabel().startswith("z1: ") and grid.get_ylabel().startswith("z2: ")
    view = plots.latent_view(model, x)
    z = view.grid_latents(view.grid_values(5), True)
    # Cells read like the image manifold: z1 grows left to right, z2 bottom to top.
    assert z[0, 0] == z[:, 0].min() and z[0, 1] == z[:, 1].max()
    np.testing.assert_allclose(grid.images[0].get_array(), model.decode(z).reshape(5, 30), rtol=1e-6)


def test_the_explorer_of_non_image_data_has_whole_component_ticks_and_margins():
    model, _ = vector_model(latent_dim=2)
    figure, _sliders = plots.explorer_figure(model)
    ax = figure.axes[0]
    assert ax.get_xlim() == (-0.5, 5.5)
    assert all(float(t).is_integer() for t in ax.get_xticks())
    line = ax.lines[0].get_ydata()
    lo, hi = ax.get_ylim()
    assert lo < line.min() and hi > line.max()


def test_long_titles_are_wrapped_to_the_figure_width(monkeypatch):
    figures = drawn_figures(monkeypatch)
    model, x = vector_model(latent_dim=1)
    plots.samples(model, "s.png", n=4, view=plots.latent_view(model, x))
    title = figures[-1]._suptitle
    width = figures[-1].get_figwidth() * figures[-1].dpi
    for line in title.get_text().split("\n"):
        assert plots._text_width(line, title.get_fontproperties()) <= width - 2 * plots.MARGIN_PX


def test_write_all_draws_every_plot_of_a_dataset(model, tmp_path):
    x, y = make_images(50, seed=7)
    dataset = SimpleNamespace(name="two-patterns", x_train=x[:30], y_train=y[:30],
                              x_test=x[30:], y_test=y[30:])
    written = plots.write_all(model, dataset, model.history, tmp_path)
    # Every picture but the pseudo-inputs, which only a VampPrior has.
    assert sorted(path.name for path in written) == sorted(
        set(plots.PLOT_FILES.values()) - {"pseudo_inputs.png"})
    assert plots.plot_files(model, model.history) == {
        name: file for name, file in plots.PLOT_FILES.items() if name != "pseudo_inputs"}
    assert "loss" not in plots.plot_files(model, None)
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


# ---------------------------------------------------------------------- where the grid looks
def hand_built(latent_dim=2, offset=(8.0, -6.0), spread=4.0, logvar=-4.0, rest=3.0):
    """A model built by hand: no hidden layer, so the encoder is linear and its posterior
    mean is mu_k = offset_k + spread * (x_k - 1/2) for k = 1, 2 (pixels 1 and 2), the
    other coordinates `rest`; log-variance `logvar` everywhere.  Far from N(0, I) by default."""
    model = cupyvae.VAE((4, 4), latent_dim=latent_dim, hidden=(), device="cpu", seed=0)
    weight, bias = model.params["encoder.0.weight"], model.params["encoder.0.bias"]
    weight[:] = 0
    bias[:latent_dim] = rest
    for k in range(2):
        weight[k, k] = spread
        bias[k] = offset[k] - spread / 2
    bias[latent_dim:] = logvar
    return model


def uniform_images(n=2000, seed=0):
    return np.random.default_rng(seed).random((n, 4, 4)).astype(np.float32)


def test_a_model_whose_codes_lie_far_from_the_prior_gets_the_codes_range(tmp_path):
    model = hand_built()
    x = uniform_images()
    view = plots.latent_view(model, x)
    codes = model.encode(x)
    assert not view.matches_prior and view.prior_ks > 0.9
    first, second = view.grid_values(20)
    np.testing.assert_allclose([first[0], first[-1]], np.quantile(codes[:, 0], [0.01, 0.99]), rtol=1e-6)
    np.testing.assert_allclose([second[0], second[-1]], np.quantile(codes[:, 1], [0.01, 0.99]), rtol=1e-6)
    grid = view.grid_latents([first, second], two_axes=True)
    assert (grid[:, 0] > 5.9).all() and (grid[:, 1] < -3.9).all()   # inside the codes' square
    title = plots._manifold_title(view, True, 20)
    assert "range of the data's codes, percentiles 1–99" in title and "KS 1.00 > 0.1" in title
    assert_varied(pixels(plots.manifold_grid(model, tmp_path / "m.png", x=x)), 0.0)


def test_codes_distributed_like_the_prior_get_the_prior_quantile_grid():
    from scipy.special import ndtri
    model = hand_built(offset=(0.0, 0.0), spread=0.0, logvar=0.0)    # q(z|x) = N(0, I) for every x
    view = plots.latent_view(model, uniform_images())
    assert view.matches_prior and view.prior_ks < 0.05
    expected = ndtri(np.linspace(0.05, 0.95, 9))
    for values in view.grid_values(9):
        # 20000 prior draws estimate a 5% quantile to about 0.015 (sd); 0.05 is > 3 sd.
        np.testing.assert_allclose(values, expected, atol=0.05)
    assert "prior quantiles u = 0.05…0.95 (aggregate posterior ≈ prior" in \
        plots._manifold_title(view, True, 9)


def test_above_two_dimensions_the_grid_is_the_scatters_pca_plane_through_the_codes_mean():
    model = hand_built(latent_dim=5, rest=3.0)
    x = uniform_images(500)
    view = plots.latent_view(model, x)
    codes = model.encode(x[view.rows])
    np.testing.assert_allclose(view.centre, codes.mean(axis=0), rtol=1e-5)
    # The codes vary along z1 and z2 only, so those span the principal plane.
    np.testing.assert_allclose(np.abs(view.basis[:, 2:]), 0, atol=1e-5)
    grid = view.grid_latents(view.grid_values(6), two_axes=True)
    np.testing.assert_allclose(grid[:, 2:], 3.0, rtol=1e-5)         # the other coordinates: the mean
    assert np.ptp(grid[:, 0]) > 3 and np.ptp(grid[:, 1]) > 3
    np.testing.assert_allclose(view.points, (codes - view.centre) @ view.basis.T, rtol=1e-5)
    assert "PC1 × PC2 of the codes, through their mean" in plots._manifold_title(view, True, 6)
    assert view.axis_names[0].startswith("PC1")


def test_write_all_shares_one_view_between_scatter_manifold_and_samples(tmp_path, monkeypatch):
    model = hand_built()
    x = uniform_images(300)
    seen = []
    original = plots.latent_view
    monkeypatch.setattr(plots, "latent_view", lambda *a, **k: seen.append(1) or original(*a, **k))
    written = plots.write_all(model, (x, None), None, tmp_path)
    assert len(seen) == 1 and len(written) == 4


# ---------------------------------------------------------------------- learned priors
def with_prior(model, prior, k):
    """A copy of a hand_built model with a learned prior (its parameters set by the caller)."""
    other = cupyvae.VAE((4, 4), latent_dim=model.config.latent_dim, hidden=(), device="cpu",
                        seed=0, prior=prior, prior_components=k)
    for name, value in model.params.items():
        other.params[name][...] = value
    return other


def drawn_figures(monkeypatch) -> list:
    """The figures the plots would save, kept instead of written."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    return figures


def prior_marks(ax):
    marks = [c for c in ax.collections if str(c.get_label()).startswith("prior component means")]
    assert len(marks) == 1, [c.get_label() for c in ax.collections]
    return marks[0]


@pytest.mark.parametrize("latent_dim", [2, 4])
def test_the_latent_scatter_marks_the_mixture_means_projected_like_the_codes(latent_dim, monkeypatch):
    mog = with_prior(hand_built(latent_dim=latent_dim), "mog", 3)
    # Means among the codes (z1 in [6, 10], z2 in [-8, -4], the rest 3): all drawn as crosses.
    means = np.full((3, latent_dim), 3.0) + np.random.default_rng(0).uniform(-0.5, 0.5, (3, latent_dim))
    means[:, :2] += [[5.0, -9.0]]
    mog.params["prior.components"][:, :latent_dim] = means
    mog.params["prior.logits"][:] = [0.0, np.log(4.0), 0.0]      # weights 1/6, 4/6, 1/6
    figures = drawn_figures(monkeypatch)
    x = uniform_images(300)
    view = plots.latent_view(mog, x)
    plots.latent_scatter(mog, x, None, "latent.png", view=view)
    ax = figures[0].axes[0]
    marks = prior_marks(ax)
    np.testing.assert_allclose(marks.get_offsets(), (means - view.centre) @ view.basis.T, rtol=1e-5)
    # Marker area proportional to the weight: 1/2, 2 and 1/2 times the equal-weight area.
    np.testing.assert_allclose(marks.get_sizes(), plots.PRIOR_MARK_AREA * np.array([0.5, 2.0, 0.5]),
                               rtol=1e-6)
    assert "prior component means (K = 3, area ∝ weight)" in [t.get_text() for t in ax.get_legend().get_texts()]
    legend_mark = ax.get_legend().legend_handles[0]
    assert legend_mark.get_sizes()[0] == plots.PRIOR_MARK_AREA     # not the legend's 3x scale


def test_prior_means_far_from_the_codes_are_arrows_and_do_not_widen_the_axes(monkeypatch):
    mog = with_prior(hand_built(), "mog", 3)
    # The codes span z1 in [6, 10], z2 in [-8, -4]; one mean among them, two far away.
    means = np.array([[8.0, -6.0], [60.0, -6.0], [8.0, 40.0]])
    mog.params["prior.components"][:, :2] = means
    figures = drawn_figures(monkeypatch)
    x = uniform_images(300)
    view = plots.latent_view(mog, x)
    plots.latent_scatter(mog, x, None, "latent.png", view=view)
    ax = figures[0].axes[0]
    np.testing.assert_allclose(prior_marks(ax).get_offsets(), means[:1], rtol=1e-5)
    arrows = {line.get_marker(): len(line.get_xdata()) for line in ax.lines
              if line.get_marker() in ("<", ">", "^", "v")}
    assert arrows == {">": 1, "^": 1}          # towards +z1 and +z2
    assert "2 more beyond the axes (arrows)" in [t.get_text() for t in ax.get_legend().get_texts()]
    # Equal aspect may widen one axis to the other's span (4 + margins), never to 60 or 40.
    assert ax.get_xlim()[1] < 12 and ax.get_ylim()[1] < -2


def test_vamp_marks_the_posterior_means_of_its_encoded_pseudo_inputs(monkeypatch):
    vamp = with_prior(hand_built(), "vamp", 4)
    w = vamp.params["prior.pseudo_inputs"]
    w[:] = 0.5
    w[:, 0] = [-1.0, 0.0, 0.25, 2.0]            # pixel 1 beyond, at and inside the [0, 1] bound
    figures = drawn_figures(monkeypatch)
    x = uniform_images(300)
    plots.latent_scatter(vamp, x, None, "latent.png")
    # hand_built: mu_1 = 8 + 4 (u_1 - 1/2), mu_2 = -6 + 4 (u_2 - 1/2), with u = hardtanh(w)
    u1 = np.array([0.0, 0.0, 0.25, 1.0])
    expected = np.stack([8 + 4 * (u1 - 0.5), np.full(4, -6.0)], axis=1)
    np.testing.assert_allclose(prior_marks(figures[0].axes[0]).get_offsets(), expected, rtol=1e-6)


def test_a_normal_prior_gets_no_marks_and_no_pseudo_inputs(model, data, monkeypatch):
    figures = drawn_figures(monkeypatch)
    plots.latent_scatter(model, *data, "latent.png")
    assert not [c for c in figures[0].axes[0].collections
                if str(c.get_label()).startswith("prior component")]
    assert model.prior_components() is None and model.pseudo_inputs() is None
    with pytest.raises(ValueError, match="prior 'normal' has no pseudo-inputs"):
        plots.pseudo_inputs(model, "u.png")


def test_a_one_dimensional_latent_marks_the_means_along_the_bottom(monkeypatch):
    mog = with_prior(hand_built(latent_dim=1, offset=(0.0, 0.0)), "mog", 5)
    figures = drawn_figures(monkeypatch)
    plots.latent_scatter(mog, uniform_images(40), None, "latent.png")
    (ticks,) = [line for line in figures[0].axes[0].lines if line.get_label().startswith("prior")]
    np.testing.assert_allclose(ticks.get_xdata(), mog.params["prior.components"][:, 0], rtol=1e-6)


def test_pseudo_inputs_are_drawn_as_the_encoder_sees_them(tmp_path):
    vamp = cupyvae.VAE(SHAPE, latent_dim=2, hidden=(8,), device="cpu", prior="vamp", prior_components=6)
    w = vamp.params["prior.pseudo_inputs"]
    w[:] = np.linspace(-0.5, 1.5, w.size).reshape(w.shape)
    u = vamp.pseudo_inputs()
    assert u.shape == (6, *SHAPE) and u.dtype == np.float32
    np.testing.assert_array_equal(u.reshape(6, -1), np.clip(w, 0, 1))
    image = pixels(plots.pseudo_inputs(vamp, tmp_path / "u.png"))
    side = mosaic_side_px(3, 8, pad=1)              # 6 images: 3 columns, 2 rows
    assert image.shape[0] == (2 * 9 - 1) * plots.pixel_zoom((2 * 9 - 1, 3 * 9 - 1)) \
        + 2 * plots.MARGIN_PX + plots.LINE_PX and image.shape[1] >= side
    assert_varied(image, 0.05)
    written = plots.write_all(vamp, make_images(30), {"epoch": [1], "train_loss": [1.0]}, tmp_path)
    assert sorted(path.name for path in written) == sorted(plots.PLOT_FILES.values())


def test_pseudo_inputs_beyond_the_cap_are_counted_in_the_title(monkeypatch):
    vamp = cupyvae.VAE(SHAPE, latent_dim=2, hidden=(8,), device="cpu", prior="vamp", prior_components=7)
    figures = drawn_figures(monkeypatch)
    plots.pseudo_inputs(vamp, "u.png", most=4)
    assert "first 4 of 7 pseudo-inputs" in figures[0].axes[0].get_title()


def test_the_grid_of_a_learned_prior_spans_the_learned_priors_quantiles():
    """q(z|x) = N((3, -2), 4 I) for every x, and a one-component mog prior that learned it:
    the KS test passes and the grid spans N((3, -2), 4 I)'s quantiles, not N(0, I)'s."""
    from scipy.special import ndtri
    mog = with_prior(hand_built(offset=(3.0, -2.0), spread=0.0, logvar=np.log(4.0)), "mog", 1)
    mog.params["prior.components"][:] = [3.0, -2.0, np.log(4.0), np.log(4.0)]
    view = plots.latent_view(mog, uniform_images())
    assert view.learned_prior and view.matches_prior
    u = ndtri(np.linspace(0.05, 0.95, 9))
    for values, centre in zip(view.grid_values(9), (3.0, -2.0)):
        # 20000 draws estimate a 5% quantile of sd 2 to about 0.03 (sd); 0.1 is > 3 sd.
        np.testing.assert_allclose(values, centre + 2 * u, atol=0.1)
    assert ("learned prior quantiles u = 0.05…0.95 of 20000 draws (aggregate posterior ≈ learned "
            "prior: KS") in plots._manifold_title(view, True, 9)
    # The prior as initialised (about N(0, I)) does not match these codes.
    mog.params["prior.components"][:] = [0.0, 0.0, 0.0, 0.0]
    assert not plots.latent_view(mog, uniform_images()).matches_prior
