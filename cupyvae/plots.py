"""Pictures of a trained VAE, written as PNG files.

Every function draws on its own `matplotlib.figure.Figure` (Agg canvas, no pyplot state),
so plotting works in scripts, tests and servers without a display; only `explore` opens a
window.  Figure sizes are fixed by the data shape alone, so a plot has the same pixel
size every time it is drawn (DPI pixels per inch).

Image data (data_shape (H, W), or (H, W, C) with C in 1, 3, 4) are drawn in grey (or
colour) without ticks.  Any other data_shape is drawn as heat strips: one row per vector,
one column per component.

Where the latent pictures look (LatentView): the scatter and the decoded manifold share
one 2-D view of the latent space, so a tile of the manifold decodes a point of the
scatter.  For latent_dim 2 the view is (z1, z2); above 2 it is the plane of the codes'
first two principal directions through their mean (the other coordinates of a grid point
are the codes' mean).  The manifold grid spans:

- the prior's quantiles u = 0.05 ... 0.95 along each axis (Kingma & Welling's figure),
  when the aggregate posterior matches the prior along both axes: the two-sample
  Kolmogorov-Smirnov distance between one draw z ~ q(z|x) per plotted example and
  PRIOR_SAMPLES draws from the prior, projected on the axis, is at most PRIOR_MATCH_KS.
  A distance of 0.1 means no quantile of the codes is more than 10 percentage points
  away from the prior's, so the prior grid and the data cover the same region; the
  sampling noise of the distance is ~1.4 sqrt(1/N + 1/PRIOR_SAMPLES) (0.02 for 5000
  examples), so a few hundred examples are needed to pass;
- otherwise the codes' own range: evenly spaced from their CODE_RANGE percentiles
  (1st to 99th) along each axis, so the grid decodes where the data actually are.

Titles and axis labels say which grid was used and why (the KS distance).

Learned priors (`mog`, `vamp`): the prior's quantiles are those of PRIOR_SAMPLES draws
from the learned prior as it stands (model.sample_latent), projected on each view axis
like the codes -- the same draws the KS test uses.  A mixture has no closed-form quantile
function, and its marginal along a PCA direction is a 1-D mixture whose quantiles would
need root finding per axis; sampling works for every prior with a sampler and costs
about 0.1 s.  The quantile noise is small: at u = 0.05 its standard deviation is
sqrt(u (1 - u) / PRIOR_SAMPLES) = 0.0015 in probability.  So the rule above holds as it
stands: the grid follows the learned prior where the data's codes are distributed like it
(a VampPrior is trained towards the aggregate posterior, so its KS distance is usually
small), else the codes' range.  The latent scatter also marks the prior's component means
(for `mog` its means, marker area proportional to the component's weight; for `vamp` the
posterior means of the encoded pseudo-inputs), projected like the codes, and write_all
draws the VampPrior's pseudo-inputs as images (pseudo_inputs.png).
"""
from __future__ import annotations

import functools
import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from .files import write_atomic

DPI = 100
MAX_SCATTER_POINTS = 5000
MAX_SLIDERS = 10
SLIDER_RANGE = 3.0          # the sliders span +-3 standard deviations of the N(0, I) prior
MANIFOLD_EDGE = 0.05        # the prior grid covers the prior's quantiles [0.05, 0.95]
PRIOR_MATCH_KS = 0.1        # the largest KS distance at which the grid follows the prior
PRIOR_SAMPLES = 20000       # prior draws for the KS test and the prior's quantiles
CODE_RANGE = (0.01, 0.99)   # otherwise the grid spans these percentiles of the codes
MAX_LEGEND_CLASSES = 10     # more classes than this get a colour bar instead of a legend
MOSAIC_TARGET_PX = 900     # image mosaics are zoomed by an integer to about this size
MAX_ZOOM = 32
MARGIN_PX = 10
LINE_PX = 24                # one line of title or label text, with its padding
CHAR_PX = 8                 # a generous width of one title character
MOSAIC_TITLE_SIZE = 11      # points
ROW_LABEL_PX = 120          # room for "reconstruction" left of a mosaic row
PRIOR_MARK_AREA = 60        # points^2 of a prior component's marker at equal weights (1/K)
PRIOR_MARK_AREA_MANY = 14   # ... for more than MANY_COMPONENTS (VampPrior's 500), not to hide the codes
MANY_COMPONENTS = 50
MAX_PSEUDO_INPUTS = 500     # pseudo_inputs.png shows at most this many (K = 500 in the paper)

# Every picture a run folder may hold (so a new run in the folder removes stale ones);
# plot_files(model, history) says which write_all writes for a given model.
PLOT_FILES = {"latent": "latent.png", "manifold": "manifold.png",
              "reconstructions": "reconstructions.png", "samples": "samples.png",
              "loss": "loss.png", "pseudo_inputs": "pseudo_inputs.png"}

# Class names of the registered labelled datasets, so legends read "Trouser", not "1".
KNOWN_LABEL_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


# ---------------------------------------------------------------------- the plots
def latent_scatter(model, x, y, path, label_names: Sequence[str] | None = None,
                   max_points: int = MAX_SCATTER_POINTS, description: str = "examples",
                   view: "LatentView | None" = None) -> Path:
    """Posterior means of x, coloured by label y (None: one colour).

    latent_dim 2: the means themselves; > 2: their PCA projection to 2-D (said in the
    title and axis labels); 1: the mean against the label with vertical jitter (a
    histogram when there are no labels).  At most `max_points` evenly spaced examples;
    the title reads "Posterior means of <count> <description>".  A dashed frame shows the
    region the manifold grid decodes.  A mixture prior's component means are marked with
    black crosses, projected like the codes (on a 1-D latent: ticks along the bottom edge);
    see mark_prior_components.  `view`: the LatentView of x (computed if None).
    """
    view = latent_view(model, x, max_points) if view is None else view
    labels = None if y is None else np.asarray(y)[view.rows]
    fig = Figure(figsize=(7.5, 6.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    latent_dim = view.codes.shape[1]
    subject = f"posterior means of {len(view.codes)} {description}"
    components = model.prior_components()
    bounds = code_bounds(view.points)
    if latent_dim == 1:
        _draw_1d_latent(ax, view.points[:, 0], labels, label_names)
        mark_prior_components(ax, view, components, bounds)
        if components is not None:
            ax.legend(loc="upper right")
        ax.set_xlim(*bounds[:, 0])
        _fit_text(ax.set_title(f"{subject.capitalize()} (1-D latent)"), fig)
    else:
        mark_prior_components(ax, view, components, bounds)   # before the legend, so it lists them
        _scatter_by_label(fig, ax, view.points, labels, label_names)
        if components is not None:
            _legend_mark_size(ax.get_legend() or ax.legend(loc="best"))
        _frame_grid(ax, view)
        ax.set_xlabel(view.axis_names[0])
        ax.set_ylabel(view.axis_names[1])
        _fit_text(ax.set_title(subject.capitalize() if latent_dim == 2
                               else f"PCA projection to 2-D of the {latent_dim}-D\n{subject}"), fig)
        _limit_to(ax, bounds)          # the codes fill the axes (marks beyond: arrows)
        if latent_dim == 2:   # equal units keep the latent geometry undistorted
            ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def manifold_grid(model, path, n: int = 20, x=None, view: "LatentView | None" = None) -> Path:
    """The decoded manifold (Kingma & Welling, fig. 4): the likelihood means of an n x n
    grid of latent points in the view the latent scatter uses (see the module docstring):
    the prior's quantiles when the aggregate posterior of x matches the prior, else the
    range of x's codes.  Without x (and view) the grid is the prior's quantiles over z1
    and z2 with the other dimensions at 0, and the title says it was not checked.

    The first axis grows left to right, the second bottom to top.  Non-image data are
    drawn as heat strips: an n x n grid of cells, each the decoded vector's values left to
    right (one strip per step, top to bottom, with one latent dimension).
    """
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if view is None:
        view = latent_view(model, x) if x is not None else prior_view(model)
    config = model.config
    two_axes = config.latent_dim >= 2
    axes = view.grid_values(int(n))
    decoded = model.decode(view.grid_latents(axes, two_axes))
    title = _manifold_title(view, two_axes, int(n))
    spans = [f"{name.split(' (')[0]}: {values[0]:.2f} … {values[-1]:.2f}"
             for name, values in zip(view.axis_names, axes)]
    if not is_image_shape(config.data_shape):
        if not two_axes:
            return _save(_strip_figure([(decoded, f"{spans[0]}, top to bottom")], title), path)
        fig = _strip_grid_figure(decoded.reshape(len(axes[1]), len(axes[0]), -1), title,
                                 xlabel=f"{spans[0]}  →   (each cell: the {config.data_dim} "
                                        "decoded values, left to right)",
                                 ylabel=f"{spans[1]}  →")
        return _save(fig, path)
    # A one-pixel gap between the images at every size: without it small images run
    # together into stripes.
    mosaic = tile(as_images(decoded, config.data_shape), len(axes[0]), pad=1)
    fig = _mosaic_figure(mosaic, *_value_range(decoded), title=title, xlabel=f"{spans[0]}  →",
                         ylabel=f"{spans[1]}  →" if two_axes else None)
    return _save(fig, path)


def reconstructions(model, x, path, n: int = 10) -> Path:
    """The first n examples of x (top row) above their reconstructions (bottom row)."""
    x = np.asarray(x)
    n = min(int(n), len(x))
    if n < 1:
        raise ValueError("reconstructions needs at least one example")
    shape = model.config.data_shape
    originals = x[:n].reshape(n, *shape)
    rebuilt = model.reconstruct(originals)
    title = f"{n} examples and their reconstructions (decoded posterior means)"
    if not is_image_shape(shape):
        fig = _strip_figure([(originals, "original"), (rebuilt, "reconstruction")], title)
        return _save(fig, path)
    images = as_images(np.concatenate([originals, rebuilt]), shape)
    mosaic = tile(images, n, pad=1)
    height = images.shape[1]
    rows = [("original", height / 2), ("reconstruction", height + 1 + height / 2)]
    fig = _mosaic_figure(mosaic, *_value_range(originals, rebuilt), title=title, row_labels=rows)
    return _save(fig, path)


def samples(model, path, n: int = 64, seed: int | None = None,
            view: "LatentView | None" = None) -> Path:
    """n draws from the prior, decoded to the likelihood mean, as a grid.  With the
    `view` of the data, the title warns when the data's codes lie elsewhere than the
    prior (then many samples look unlike the data)."""
    return sample_grid(model, model.sample(n, seed=seed), path, view)


def sample_grid(model, drawn, path, view: "LatentView | None" = None) -> Path:
    """Prior samples `drawn` (n, *data_shape) of `model` as a grid, titled by samples_title."""
    return image_grid(drawn, path, data_shape=model.config.data_shape,
                      title=samples_title(len(drawn), view))


def samples_title(n: int, view: "LatentView | None" = None) -> str:
    """The title of every picture of prior samples (samples.png, `cupyvae sample`): with the
    `view` of the data, a warning when their codes are not distributed like the prior."""
    title = f"{n} samples from the prior (likelihood means)"
    if view is not None and not view.matches_prior:
        title += (f"\nthe data's codes are not distributed like the prior (KS {view.prior_ks:.2f} > "
                  f"{PRIOR_MATCH_KS:g}): some samples may look unlike the data")
    return title


def loss_curves(history: dict, path, validation: str = "test split",
                objective: str = "the training objective") -> Path:
    """Training loss and validation loss per epoch, in nats per example.  The training
    curve is what training minimised, named by `objective` (e.g. "negative IWAE bound
    (k = 5)"; cupyvae.objectives.loss_name); the validation curve is the negative ELBO,
    on the set `validation` names (the legend reads "validation (<validation>): ...")."""
    epochs = list(history.get("epoch", []))
    if not epochs:
        raise ValueError("the training history has no epochs to plot")
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if len(epochs) <= 30 else None   # single epochs would be invisible otherwise
    ax.plot(epochs, history["train_loss"], marker=marker, label=f"train: {objective}")
    validated = [(e, v) for e, v in zip(epochs, history.get("val_loss", [])) if v is not None]
    if validated:
        ax.plot(*zip(*validated), marker=marker, label=f"validation ({validation}): negative ELBO")
        best_epoch, best = min(validated, key=lambda pair: pair[1])
        title = f"Loss per epoch (best validation {best:.2f} at epoch {best_epoch})"
    else:
        title = "Loss per epoch"
    _fit_text(ax.set_title(title), fig)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    # Whole epochs only, and room around the first and last (one epoch is one tick, not
    # 0.945 ... 1.050).
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def write_all(model, data, history: dict | None, run_dir,
              validation: str = "test split", training=None,
              progress: Callable[[int], None] | None = None) -> list[Path]:
    """Every plot into run_dir (file names in PLOT_FILES); returns the paths written.

    `data`: a datasets.Dataset (its test split is drawn, or the training split when the
    test split is empty), an (x, y) pair, or x alone.  The latent scatter, the manifold
    and the samples share one LatentView of it.  No loss plot without history;
    `validation` names the validation set in its legend, and `training` (the
    TrainingOptions the history was trained with) its training curve.  `progress(1)` is
    called after each picture.
    """
    from .objectives import loss_name
    x, y, label_names, description = _plot_data(data)
    run_dir = Path(run_dir)
    view = latent_view(model, x)
    objective = "the training objective" if training is None else loss_name(training)
    draw = {
        "latent": lambda path: latent_scatter(model, x, y, path, label_names=label_names,
                                              description=description, view=view),
        "manifold": lambda path: manifold_grid(model, path, view=view),
        "reconstructions": lambda path: reconstructions(model, x, path),
        "samples": lambda path: samples(model, path, view=view),
        "loss": lambda path: loss_curves(history, path, validation, objective),
        "pseudo_inputs": lambda path: pseudo_inputs(model, path),
    }
    written = []
    for name, file in plot_files(model, history).items():
        written.append(draw[name](run_dir / file))
        if progress is not None:
            progress(1)
    return written


def data_view(model, data) -> "LatentView":
    """The LatentView write_all draws `data` (a Dataset, an (x, y) pair or x) in."""
    return latent_view(model, _plot_data(data)[0])


def plot_files(model, history: dict | None = None) -> dict[str, str]:
    """The PLOT_FILES entries write_all writes for `model`: "loss" only with a history that
    has epochs, "pseudo_inputs" only for a prior with pseudo-inputs (the VampPrior)."""
    skipped = set()
    if not (history and history.get("epoch")):
        skipped.add("loss")
    if model.pseudo_inputs() is None:
        skipped.add("pseudo_inputs")
    return {name: file for name, file in PLOT_FILES.items() if name not in skipped}


def pseudo_inputs(model, path, most: int = MAX_PSEUDO_INPUTS) -> Path:
    """The VampPrior's pseudo-inputs u_k = hardtanh(w_k) as images, as the encoder sees them
    (values in [0, 1], drawn on the same grey scale as the data), in the order they are
    stored; at most `most` (the title says when there are more).  ValueError for a prior
    without pseudo-inputs."""
    u = model.pseudo_inputs()
    if u is None:
        raise ValueError(f"prior {model.config.prior!r} has no pseudo-inputs to draw")
    count = len(u)
    shown = u[:int(most)]
    which = f"{count}" if len(shown) == count else f"first {len(shown)} of {count}"
    title = f"The {which} pseudo-inputs of the VampPrior (hardtanh(w), as the encoder sees them)"
    return image_grid(shown, path, data_shape=model.config.data_shape, title=title)


def image_grid(x, path, data_shape=None, ncols: int | None = None, title: str | None = None) -> Path:
    """Any array of examples (N, *data_shape) as a grid of images (or heat strips)."""
    x = np.asarray(x)
    shape = tuple(data_shape) if data_shape is not None else x.shape[1:]
    if not is_image_shape(shape):
        return _save(_strip_figure([(x.reshape(len(x), -1), "example")], title), path)
    ncols = math.ceil(math.sqrt(len(x))) if ncols is None else ncols
    mosaic = tile(as_images(x, shape), ncols, pad=1)
    return _save(_mosaic_figure(mosaic, *_value_range(x), title=title), path)


# ---------------------------------------------------------------------- the explorer
def slider_ranges(codes, z=None) -> np.ndarray:
    """(latent_dim, 2) slider spans: per dimension, the codes' 0.5-99.5 percentiles
    widened to at least +-SLIDER_RANGE (the N(0, I) prior's +-3 sd) and to include z."""
    codes = np.asarray(codes, np.float64)
    lo, hi = np.quantile(codes, [0.005, 0.995], axis=0)
    lo, hi = np.minimum(lo, -SLIDER_RANGE), np.maximum(hi, SLIDER_RANGE)
    if z is not None:
        lo, hi = np.minimum(lo, z), np.maximum(hi, z)
    return np.stack([np.floor(lo), np.ceil(hi)], axis=1)


def explorer_figure(model, figure: Figure | None = None, z=None, ranges=None,
                    start: str | None = None):
    """Build the latent explorer on `figure` (a new Agg figure if None): the decoded
    image of z (default 0, the prior mean) above one slider per latent dimension (the
    first MAX_SLIDERS dimensions only; the others keep their value from z).  `ranges`
    (latent_dim, 2): each slider's span (default +-SLIDER_RANGE; see slider_ranges);
    `start` says in the title where z came from (default "0").  Returns (figure,
    sliders); keep the sliders referenced, or matplotlib forgets their callbacks."""
    from matplotlib.widgets import Slider
    config = model.config
    n_sliders = min(config.latent_dim, MAX_SLIDERS)
    z = np.zeros(config.latent_dim, np.float32) if z is None else np.array(z, np.float32)
    if z.shape != (config.latent_dim,):
        raise ValueError(f"z has shape {z.shape}; expected ({config.latent_dim},)")
    if ranges is None:
        ranges = np.tile([-SLIDER_RANGE, SLIDER_RANGE], (config.latent_dim, 1))
    ranges = np.asarray(ranges, np.float64)
    if ranges.shape != (config.latent_dim, 2) or not (ranges[:, 0] < ranges[:, 1]).all():
        raise ValueError(f"ranges must be (low, high) pairs, shape ({config.latent_dim}, 2)")
    slider_in = 0.32 * n_sliders + 0.3
    image_in = 4.5
    height = image_in + slider_in
    if figure is None:
        figure = Figure(figsize=(5.5, height), dpi=DPI)
    else:
        figure.set_size_inches(5.5, height)
    # A line plot (non-image data) needs room for its tick labels and axis label.
    below, left = (0.1, 0.08) if is_image_shape(config.data_shape) else (0.6, 0.14)
    image_ax = figure.add_axes((left, (slider_in + below) / height, 0.92 - left,
                                (image_in - 0.6 - below) / height))
    view = _DatumView(image_ax, config.data_shape, model.decode(z[None])[0])
    where = start or ("0" if not z[n_sliders:].any() else "their given values")
    _fit_text(figure.suptitle(_explorer_title(config.latent_dim, n_sliders, where), fontsize=10),
              figure)
    sliders = []
    for i in range(n_sliders):
        bottom = (slider_in - 0.32 * (i + 1)) / height
        slider_ax = figure.add_axes((0.15, bottom, 0.65, 0.22 / height))
        sliders.append(Slider(slider_ax, f"z{i + 1}", ranges[i, 0], ranges[i, 1],
                              valinit=float(np.clip(z[i], *ranges[i])), valfmt="%+.2f"))

    def redraw(_value):
        for i, slider in enumerate(sliders):
            z[i] = slider.val
        view.update(model.decode(z[None])[0])
        figure.canvas.draw_idle()

    for slider in sliders:
        slider.on_changed(redraw)
    return figure, sliders


def save_explorer(model, path, z=None, ranges=None, start: str | None = None) -> Path:
    """The explorer figure at z (default: the prior mean 0) as a PNG, no display needed."""
    figure, _ = explorer_figure(model, z=z, ranges=ranges, start=start)
    return _save(figure, path)


def explore(model, z=None, ranges=None, start: str | None = None,
            title: str = "cupyvae explore") -> None:
    """Open the interactive explorer window titled `title` (sliders start at z, default
    0); returns when the window is closed."""
    import matplotlib.pyplot as plt
    figure = plt.figure(num=title)
    _figure, sliders = explorer_figure(model, figure, z=z, ranges=ranges,   # noqa: F841
                                       start=start)                         # (keeps the sliders alive)
    plt.show()


def _explorer_title(latent_dim: int, n_sliders: int, where: str = "0") -> str:
    """`where`: where the unslid dimensions (and the sliders) start, e.g. "the data's mean code"."""
    if n_sliders < latent_dim:
        return (f"Latent explorer: sliders for z1–z{n_sliders} of {latent_dim} "
                f"(at most {MAX_SLIDERS} sliders);\n{_dims(n_sliders + 1, latent_dim)} stay at {where}")
    return f"Latent explorer: {latent_dim}-D latent, decoded live, starting at {where}"


class _DatumView:
    """One decoded example on an axes: an image, or a line for non-image data."""

    def __init__(self, ax, data_shape, datum):
        self.data_shape = tuple(data_shape)
        if is_image_shape(self.data_shape):
            image = as_images(datum[None], self.data_shape)[0]
            self.artist = ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            _no_ticks(ax)
        else:
            flat = np.ravel(datum)
            (self.artist,) = ax.plot(np.arange(len(flat)), flat,
                                     marker="o" if len(flat) <= 30 else None, markersize=4)
            self.ax = ax
            ax.set_ylim(*self._with_margin(*_value_range(flat)))
            ax.set_xlim(-0.5, len(flat) - 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))   # components are whole
            ax.set_xlabel("component")

    @staticmethod
    def _with_margin(lo: float, hi: float, margin: float = 0.05) -> tuple[float, float]:
        return lo - margin * (hi - lo), hi + margin * (hi - lo)

    def update(self, datum):
        if is_image_shape(self.data_shape):
            self.artist.set_data(as_images(datum[None], self.data_shape)[0])
            return
        flat = np.ravel(datum)
        self.artist.set_ydata(flat)
        # Widen (never narrow) the value axis to what the sliders reach, so the line does
        # not leave it and the axis does not jump back and forth.
        lo, hi = self.ax.get_ylim()
        if flat.min() < lo or flat.max() > hi:
            self.ax.set_ylim(*self._with_margin(min(lo, float(flat.min())),
                                                max(hi, float(flat.max()))))


# ---------------------------------------------------------------------- images
def is_image_shape(data_shape) -> bool:
    """(H, W) grey, or (H, W, C) with 1, 3 or 4 channels."""
    shape = tuple(data_shape)
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))


def as_images(x, data_shape) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images; non-image data become (N, 1, D) strips."""
    x = np.asarray(x)
    shape = tuple(data_shape)
    if not is_image_shape(shape):
        return x.reshape(len(x), 1, -1)
    images = x.reshape(len(x), *shape)
    return images[..., 0] if len(shape) == 3 and shape[2] == 1 else images


def tile(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Images (N, H, W[, C]) as one mosaic, row by row, with `pad` blank pixels between
    them (the empty cells and the gaps take the brightest value)."""
    n, h, w = images.shape[:3]
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    blank = max(1.0, float(np.max(images)))
    mosaic = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, *images.shape[3:]),
                     blank, dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, ncols)
        mosaic[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[k]
    return mosaic


def pixel_zoom(mosaic_hw) -> int:
    """Screen pixels per data pixel: an integer, so every image pixel (and every gap
    between images) comes out the same size; the longer side near MOSAIC_TARGET_PX."""
    return int(min(MAX_ZOOM, max(1, round(MOSAIC_TARGET_PX / max(mosaic_hw)))))


def _mosaic_figure(mosaic, vmin, vmax, *, title=None, xlabel=None, ylabel=None,
                   row_labels=()) -> Figure:
    """A figure that shows `mosaic` at pixel_zoom, framed by exactly the room its title,
    axis labels and row labels (pairs of text and row centre in mosaic pixels) need."""
    h, w = mosaic.shape[:2]
    zoom = pixel_zoom((h, w))
    title_lines = title.count("\n") + 1 if title else 0
    left = MARGIN_PX + (LINE_PX if ylabel else 0) + (ROW_LABEL_PX if row_labels else 0)
    bottom = MARGIN_PX + (LINE_PX if xlabel else 0)
    top = MARGIN_PX + LINE_PX * title_lines
    # The title is centred over the mosaic: the figure is as wide as both need, with the
    # title measured in its font (plus a character's slack).
    half_title = math.ceil(max((_text_width(line, FontProperties(size=MOSAIC_TITLE_SIZE))
                                for line in (title or "").splitlines()), default=0) + CHAR_PX) // 2
    width = max(left + w * zoom + MARGIN_PX, 2 * (half_title + MARGIN_PX))
    left = max(left, (width - w * zoom) // 2)            # centre a narrow mosaic under its title
    width = max(width, left + w * zoom // 2 + half_title + MARGIN_PX)   # labels pushed it right
    height = bottom + h * zoom + top
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, w * zoom / width, h * zoom / height))
    ax.imshow(mosaic, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    _no_ticks(ax)
    ax.set_frame_on(False)   # the gaps separate the images; a frame would box in empty cells
    if title:
        ax.set_title(title, fontsize=MOSAIC_TITLE_SIZE)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    for text, row_centre in row_labels:
        ax.text(-10 / zoom, row_centre, text, ha="right", va="center", fontsize=10)
    return fig


def _strip_figure(panels, title: str | None) -> Figure:
    """Non-image data as heat maps: one panel per (array (N, D), name), one row per vector."""
    rows = sum(len(array) for array, _ in panels)
    fig = Figure(figsize=(7.0, min(1.2 + 0.3 * rows + 0.4 * len(panels), 10.0)), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    vmin, vmax = _value_range(*(array for array, _ in panels))
    for ax, (array, name) in zip(axes, panels):
        shown = ax.imshow(np.reshape(array, (len(array), -1)), cmap="viridis", vmin=vmin,
                          vmax=vmax, interpolation="nearest", aspect="auto")
        ax.set_yticks([])
        ax.set_ylabel(name)
    axes[-1].set_xlabel("component")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))   # components are whole
    fig.colorbar(shown, ax=list(axes), label="value")
    if title:
        _fit_text(fig.suptitle(title, fontsize=MOSAIC_TITLE_SIZE), fig)
    return fig


def _strip_grid_figure(grid: np.ndarray, title: str, xlabel: str, ylabel: str) -> Figure:
    """Non-image data decoded on a 2-D grid, (rows, cols, D): one cell per grid point, its
    D values as a heat strip left to right, white lines between the cells (so cells stay
    apart whatever D is)."""
    rows, cols, d = grid.shape
    fig = Figure(figsize=(7.5, min(1.8 + 0.3 * rows, 10.0)), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    vmin, vmax = _value_range(grid)
    shown = ax.imshow(grid.reshape(rows, cols * d), cmap="viridis", vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="auto", extent=(0, cols, rows, 0))
    for x in range(1, cols):
        ax.axvline(x, color="white", linewidth=1.5)
    for y in range(1, rows):
        ax.axhline(y, color="white", linewidth=1.5)
    _no_ticks(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(shown, ax=ax, label="decoded value")
    _fit_text(fig.suptitle(title, fontsize=MOSAIC_TITLE_SIZE), fig)
    _fit_text(ax.xaxis.label, fig)
    return fig


def _fit_text(text, fig: Figure):
    """Wrap the lines of a title or label (a matplotlib Text) at spaces so that each is at
    most the figure's width less its margins, measured in the text's own font; returns it."""
    width = fig.get_figwidth() * fig.dpi - 2 * MARGIN_PX
    font = text.get_fontproperties()
    lines = [piece for line in text.get_text().split("\n")
             for piece in _wrap_to_width(line, font, width)]
    text.set_text("\n".join(lines))
    return text


def _wrap_to_width(line: str, font, width: float) -> list[str]:
    measured = _text_width(line, font)
    if measured <= width:
        return [line]
    chars = max(8, int(len(line) * width / measured))
    while chars > 8:
        pieces = textwrap.wrap(line, chars)
        if all(_text_width(piece, font) <= width for piece in pieces):
            return pieces
        chars -= 1
    return textwrap.wrap(line, chars)


def _text_width(text: str, font) -> float:
    """Pixels (at DPI) that `text` takes in FontProperties `font`."""
    return _measuring_renderer().get_text_width_height_descent(text, font, ismath=False)[0]


@functools.lru_cache(maxsize=1)
def _measuring_renderer():
    from matplotlib.backends.backend_agg import RendererAgg
    return RendererAgg(1, 1, DPI)


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _value_range(*arrays) -> tuple[float, float]:
    """[0, 1] for data in [0, 1] (so grey levels mean the same in every plot), else the
    data's own range."""
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    return min(lo, 0.0), max(hi, 1.0)


# ---------------------------------------------------------------------- latent space
@dataclass(frozen=True)
class LatentView:
    """The view of the latent space that the scatter and the manifold share.

    A latent point with view coordinates a (k,) is centre + a @ basis.  k = 2 (k = 1 for a
    1-D latent); for latent_dim <= 2 the basis is the identity and the centre 0, above 2
    the basis is the codes' first two principal directions and the centre their mean.
    `prior_ks` is the larger KS distance (over the axes) between the aggregate posterior
    and the prior, `matches_prior` whether it is at most PRIOR_MATCH_KS (None and False
    when it was not measured: no data)."""
    codes: np.ndarray             # (N, latent_dim) posterior means of the plotted examples
    rows: np.ndarray              # (N,) which examples of the data were plotted
    centre: np.ndarray            # (latent_dim,)
    basis: np.ndarray             # (k, latent_dim), orthonormal rows
    axis_names: tuple[str, ...]   # k names, for the axis labels
    prior_points: np.ndarray      # (PRIOR_SAMPLES, k) prior draws in view coordinates
    prior_ks: float | None
    matches_prior: bool
    learned_prior: bool = False   # the prior has learned parameters (its quantiles are the learned ones)

    @property
    def points(self) -> np.ndarray:
        """(N, k) view coordinates of the codes."""
        return self.project(self.codes)

    def project(self, z) -> np.ndarray:
        """(M, k) view coordinates of latent points z (M, latent_dim)."""
        return (np.asarray(z, np.float64) - self.centre) @ self.basis.T

    def grid_values(self, n: int) -> list[np.ndarray]:
        """n coordinates per axis, increasing: the prior's quantiles u = MANIFOLD_EDGE ...
        1 - MANIFOLD_EDGE when the aggregate posterior matches the prior (or there are no
        codes), else evenly spaced over the codes' CODE_RANGE percentiles."""
        if self.matches_prior or len(self.codes) == 0:
            u = np.linspace(MANIFOLD_EDGE, 1 - MANIFOLD_EDGE, n)
            return [np.quantile(self.prior_points[:, a], u) for a in range(len(self.basis))]
        lo, hi = np.quantile(self.points, CODE_RANGE, axis=0)
        return [np.linspace(lo[a], hi[a], n) for a in range(len(self.basis))]

    def grid_latents(self, values: list[np.ndarray], two_axes: bool) -> np.ndarray:
        """Latent rows in mosaic order: the second axis from high (top row) to low, the
        first from low to high; with two_axes False, the first axis only."""
        if not two_axes:
            coords = np.zeros((len(values[0]), len(self.basis)))
            coords[:, 0] = values[0]
        else:
            first, second = np.meshgrid(values[0], values[1][::-1])
            coords = np.stack([first.ravel(), second.ravel()], axis=1)
        return (self.centre + coords @ self.basis).astype(np.float32)

    def grid_description(self) -> str:
        """Which grid was used, and why."""
        prior = "learned prior" if self.learned_prior else "prior"
        quantiles = f"{prior} quantiles u = {MANIFOLD_EDGE:g}…{1 - MANIFOLD_EDGE:g}"
        if self.learned_prior:
            quantiles += f" of {PRIOR_SAMPLES} draws"
        if self.prior_ks is None:
            return f"{quantiles} (not checked against data)"
        verdict = (f"aggregate posterior ≈ {prior}: KS {self.prior_ks:.2f} ≤ {PRIOR_MATCH_KS:g}"
                   if self.matches_prior else
                   f"aggregate posterior ≠ {prior}: KS {self.prior_ks:.2f} > {PRIOR_MATCH_KS:g}")
        if self.matches_prior:
            return f"{quantiles} ({verdict})"
        lo, hi = (round(100 * q) for q in CODE_RANGE)
        return f"range of the data's codes, percentiles {lo}–{hi} ({verdict})"


def latent_view(model, x, max_points: int = MAX_SCATTER_POINTS) -> LatentView:
    """The LatentView of (at most max_points evenly spaced examples of) x: its codes,
    their 2-D view, and the KS test of the aggregate posterior against the prior."""
    from scipy.stats import ks_2samp
    x = np.asarray(x)
    rows = _evenly_spaced(len(x), max_points)
    codes = model.encode(x[rows])
    centre, basis, names = _view_axes(codes)
    to_view = lambda z: (z - centre) @ basis.T          # noqa: E731
    drawn = to_view(model.encode(x[rows], sample=True))  # one z ~ q(z|x) each: q(z) samples
    prior = to_view(model.sample_latent(PRIOR_SAMPLES))   # the learned prior, for mog and vamp
    ks = max(float(ks_2samp(drawn[:, a], prior[:, a]).statistic) for a in range(len(basis)))
    return LatentView(codes, rows, centre, basis, names, prior, ks, ks <= PRIOR_MATCH_KS,
                      model.spec.prior.learnable)


def prior_view(model) -> LatentView:
    """The view without data: z1 and z2 (others 0) and the prior's quantiles."""
    latent_dim = model.config.latent_dim
    k = min(latent_dim, 2)
    basis = np.eye(k, latent_dim)
    prior = model.sample_latent(PRIOR_SAMPLES) @ basis.T
    return LatentView(np.zeros((0, latent_dim), np.float32), np.zeros(0, np.int64),
                      np.zeros(latent_dim), basis, tuple(f"z{a + 1}" for a in range(k)),
                      prior, None, False, model.spec.prior.learnable)


def _view_axes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(centre, basis (k, Z), axis names): the coordinates themselves up to 2-D, else the
    plane of the first two principal directions through the codes' mean."""
    latent_dim = codes.shape[1]
    if latent_dim <= 2:
        names = ("z1 (posterior mean)", "z2 (posterior mean)")[:latent_dim]
        return np.zeros(latent_dim), np.eye(latent_dim), names
    centre = codes.mean(axis=0).astype(np.float64)
    _, singular, vectors = np.linalg.svd(codes - centre, full_matrices=False)
    share = singular ** 2 / max(float(np.sum(singular ** 2)), 1e-30)
    names = (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}% of variance)")
    return centre, vectors[:2], names


def _frame_grid(ax, view: LatentView, n: int = 20) -> None:
    """A dashed frame around the region the manifold grid decodes."""
    from matplotlib.patches import Rectangle
    first, second = view.grid_values(n)
    ax.add_patch(Rectangle((first[0], second[0]), first[-1] - first[0], second[-1] - second[0],
                           fill=False, linestyle="--", linewidth=1.0, edgecolor="0.3",
                           label="manifold grid"))


def mark_prior_components(ax, view: LatentView, components: dict | None,
                          bounds: np.ndarray | None = None) -> None:
    """Black crosses at the prior's component means (model.prior_components()), projected
    like the codes; marker area PRIOR_MARK_AREA at equal weights 1/K, proportional to the
    weight (clipped to 0.1-10x), so a component training has starved shows small.  On a
    1-D view: ticks along the bottom edge.  Nothing for a prior without components.

    `bounds` (2, k): the axes' limits (code_bounds).  A mean beyond them is drawn as a grey
    arrowhead on the edge, pointing towards it (legend: how many lie beyond), so the axes
    stay on the codes."""
    if components is None:
        return
    weights, points = components["weights"], view.project(components["means"])
    count = len(weights)
    label = f"prior component means (K = {count}" + (
        ")" if np.allclose(weights, 1 / count) else ", area ∝ weight)")
    inside = (np.ones(count, bool) if bounds is None
              else ((points >= bounds[0]) & (points <= bounds[1])).all(axis=1))
    if view.basis.shape[0] == 1:
        ax.plot(points[inside, 0], np.full(int(inside.sum()), 0.02), "|", color="black",
                markersize=12, transform=ax.get_xaxis_transform(), label=label, zorder=3)
    else:
        area = PRIOR_MARK_AREA if count <= MANY_COMPONENTS else PRIOR_MARK_AREA_MANY
        sizes = area * np.clip(np.asarray(weights) * count, 0.1, 10.0)
        ax.scatter(points[inside, 0], points[inside, 1], s=sizes[inside], marker="X",
                   color="black", edgecolors="white", linewidths=0.6, label=label, zorder=3)
    if not inside.all():
        _mark_beyond_the_axes(ax, points[~inside], bounds)


BEYOND_THE_AXES = "beyond the axes (arrows)"    # the arrowheads' legend entry ends so
# The arrowhead that points from an edge of the axes towards a mark beyond it, by
# (axis, beyond the high end).
_EDGE_ARROWS = {(0, True): ">", (0, False): "<", (1, True): "^", (1, False): "v"}


def _mark_beyond_the_axes(ax, points: np.ndarray, bounds: np.ndarray) -> None:
    """Arrowheads on the edge of the axes towards `points` (M, k) outside `bounds` (2, k),
    on the edge of the axis each overshoots most (relative to the span), at its other
    coordinate clipped to the bounds.  The edge is placed in axes coordinates, so it
    stays on the edge however the limits end up (equal aspect widens one axis)."""
    from matplotlib.transforms import blended_transform_factory
    span = bounds[1] - bounds[0]
    overshoot = np.maximum(points - bounds[1], bounds[0] - points) / span
    axis = np.argmax(overshoot, axis=1)
    high = points[np.arange(len(points)), axis] > bounds[1][axis]
    edge = np.clip(points, bounds[0], bounds[1])
    label = f"{len(points)} more {BEYOND_THE_AXES}"
    for (a, h), marker in _EDGE_ARROWS.items():
        chosen = (axis == a) & (high == h)
        if not chosen.any():
            continue
        at_edge = np.full(int(chosen.sum()), 1.0 if h else 0.0)
        if points.shape[1] == 1:          # ticks along the bottom: axes coordinates throughout
            xy, transform = (at_edge, np.full_like(at_edge, 0.02)), ax.transAxes
        elif a == 0:
            xy = (at_edge, edge[chosen, 1])
            transform = blended_transform_factory(ax.transAxes, ax.transData)
        else:
            xy = (edge[chosen, 0], at_edge)
            transform = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(*xy, marker, color="0.35", markeredgecolor="white", markersize=9,
                linestyle="none", transform=transform, clip_on=False, label=label, zorder=3)
        label = None      # one legend entry for all the arrows


def _limit_to(ax, bounds: np.ndarray) -> None:
    """Autoscale the axes to `bounds` (2, 2) alone: the grid frame (which may reach past
    the codes) and the prior's marks do not widen them, and an equal aspect may still."""
    ax.ignore_existing_data_limits = True
    ax.update_datalim(bounds)
    ax.margins(0)
    ax.autoscale_view()


def code_bounds(points: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """(2, k) axis limits around points (N, k): their range widened by `margin` of its span
    on each side (a zero span by 1)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.stack([lo - margin * span, hi + margin * span])


def _legend_mark_size(legend) -> None:
    """The legend's cross (and arrowhead) at the equal-weight size: the legend scales
    markers up (so that tiny data points show), which would make a heavy component's
    cross cover its text."""
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        if text.get_text().startswith("prior component means"):
            handle.set_sizes([PRIOR_MARK_AREA])
        elif text.get_text().endswith(BEYOND_THE_AXES):
            handle.set_markersize(9)


def _point_style(count: int) -> dict:
    # Small dots for thousands of points (density shows), bigger ones for a few hundred.
    return dict(s=4 if count > 2000 else 12, alpha=0.6, linewidths=0)


def _scatter_by_label(fig, ax, points, labels, label_names) -> None:
    style = _point_style(len(points))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], **style)
        return
    classes = np.unique(labels)
    if len(classes) > MAX_LEGEND_CLASSES:
        mappable = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="viridis", **style)
        fig.colorbar(mappable, ax=ax, label="label")
        return
    for k, label in enumerate(classes):
        chosen = labels == label
        ax.scatter(points[chosen, 0], points[chosen, 1], color=f"C{k}",
                   label=_label_name(label, label_names), **style)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, frameon=False)


def _draw_1d_latent(ax, z, labels, label_names) -> None:
    ax.set_xlabel("z1 (posterior mean)")
    if labels is None:
        ax.hist(z, bins=50)
        ax.set_ylabel("examples")
        return
    classes = np.unique(labels)
    # Each class on its own row; jitter spreads the points so their density shows.
    row = np.searchsorted(classes, labels)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(z))
    colours = [f"C{k % 10}" for k in row]
    ax.scatter(z, row + jitter, color=colours, **_point_style(len(z)))
    ax.set_yticks(range(len(classes)), [_label_name(c, label_names) for c in classes])
    ax.set_ylabel("label (rows jittered)")


def _label_name(label, label_names) -> str:
    index = int(label)
    if label_names is not None and 0 <= index < len(label_names):
        return str(label_names[index])
    return str(label)


def _manifold_title(view: LatentView, two_axes: bool, n: int) -> str:
    """What the grid varies, through which point, and which range (see grid_description)."""
    latent_dim = view.centre.shape[0]
    if latent_dim > 2:
        plane = ("PC1 × PC2" if two_axes else "PC1") + " of the codes, through their mean"
    elif two_axes:
        plane = "z1 × z2"
    else:
        plane = "z1" + ("" if latent_dim == 1 else f", {_dims(2, latent_dim)} at 0")
    if view.prior_ks is None and latent_dim > 2:
        plane = ("z1 × z2" if two_axes else "z1") + f", {_dims(3 if two_axes else 2, latent_dim)} at 0"
    shape = f"{n}×{n}" if two_axes else f"{n} steps"
    return f"Decoded manifold, {shape}: {plane}\n{view.grid_description()}"


def _dims(first: int, last: int) -> str:
    return f"z{first}" if first == last else f"z{first}–z{last}"


# ---------------------------------------------------------------------- plumbing
def _plot_data(data):
    """(x, y, label names, description) to draw, from a Dataset, an (x, y) pair or x alone."""
    if hasattr(data, "x_test"):
        use_test = len(data.x_test) > 0
        x = data.x_test if use_test else data.x_train
        y = data.y_test if use_test else data.y_train
        names = getattr(data, "label_names", None) or KNOWN_LABEL_NAMES.get(data.name)
        return x, y, names, "test examples" if use_test else "training examples"
    if isinstance(data, tuple):
        x, y = data
        return x, y, None, "examples"
    return data, None, None, "examples"


def _evenly_spaced(n: int, most: int) -> np.ndarray:
    # Evenly spaced, not the first `most`: ordered data (Frey is a video) stay represented.
    return np.unique(np.linspace(0, n - 1, min(n, most)).astype(np.int64))


def _save(fig: Figure, path) -> Path:
    """Render the PNG in memory, then write it atomically: a killed run leaves the old
    picture or the new one, never a truncated file, and a symlink at `path` is replaced
    rather than its target overwritten."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    write_atomic(path, buffer.getvalue())
    return path
