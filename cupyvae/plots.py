"""Pictures of a trained VAE, written as PNG files.

Every function draws on its own `matplotlib.figure.Figure` (Agg canvas, no pyplot state),
so plotting works in scripts, tests and servers without a display; only `explore` opens a
window.  Figure sizes are fixed by the data shape alone, so a plot has the same pixel
size every time it is drawn (DPI pixels per inch).

Image data (data_shape (H, W), or (H, W, C) with C in 1, 3, 4) are drawn in grey (or
colour) without ticks.  Any other data_shape is drawn as heat strips: one row per vector,
one column per component.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import write_atomic

DPI = 100
MAX_SCATTER_POINTS = 5000
MAX_SLIDERS = 10
SLIDER_RANGE = 3.0          # the sliders span +-3 standard deviations of the N(0, I) prior
MANIFOLD_EDGE = 0.05        # the manifold grid covers the quantiles [0.05, 0.95]
MAX_LEGEND_CLASSES = 10     # more classes than this get a colour bar instead of a legend
MOSAIC_TARGET_PX = 900     # image mosaics are zoomed by an integer to about this size
MAX_ZOOM = 32
MARGIN_PX = 10
LINE_PX = 24                # one line of title or label text, with its padding
CHAR_PX = 8                 # a generous width of one title character
ROW_LABEL_PX = 120          # room for "reconstruction" left of a mosaic row

PLOT_FILES = {"latent": "latent.png", "manifold": "manifold.png",
              "reconstructions": "reconstructions.png", "samples": "samples.png",
              "loss": "loss.png"}

# Class names of the registered labelled datasets, so legends read "Trouser", not "1".
KNOWN_LABEL_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


# ---------------------------------------------------------------------- the plots
def latent_scatter(model, x, y, path, label_names: Sequence[str] | None = None,
                   max_points: int = MAX_SCATTER_POINTS, description: str = "examples") -> Path:
    """Posterior means of x, coloured by label y (None: one colour).

    latent_dim 2: the means themselves; > 2: their PCA projection to 2-D (said in the
    title and axis labels); 1: the mean against the label with vertical jitter (a
    histogram when there are no labels).  At most `max_points` evenly spaced examples;
    the title reads "Posterior means of <count> <description>".
    """
    x = np.asarray(x)
    keep = _evenly_spaced(len(x), max_points)
    z = model.encode(x[keep])
    labels = None if y is None else np.asarray(y)[keep]
    fig = Figure(figsize=(7.5, 6.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    latent_dim = z.shape[1]
    subject = f"posterior means of {len(z)} {description}"
    if latent_dim == 1:
        _draw_1d_latent(ax, z[:, 0], labels, label_names)
        ax.set_title(f"{subject.capitalize()} (1-D latent)")
    else:
        points, axis_names = _two_dimensional_view(z)
        _scatter_by_label(fig, ax, points, labels, label_names)
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
        ax.set_title(subject.capitalize() if latent_dim == 2
                     else f"PCA projection to 2-D of the {latent_dim}-D\n{subject}")
        if latent_dim == 2:   # equal units keep the latent geometry undistorted
            ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def manifold_grid(model, path, n: int = 20) -> Path:
    """The decoded manifold (Kingma & Welling, fig. 4): z on an n x n grid of prior
    quantiles, z = Phi^-1(u) with u evenly spaced in [0.05, 0.95].

    z1 grows left to right, z2 bottom to top.  With more than two latent dimensions the
    others stay at 0; with one, the grid is a single row.  Non-image data: one heat
    strip per z1 value.
    """
    from scipy.special import ndtri   # = scipy.stats.norm.ppf, without importing scipy.stats
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    config = model.config
    values = ndtri(np.linspace(MANIFOLD_EDGE, 1 - MANIFOLD_EDGE, int(n)))
    image_data = is_image_shape(config.data_shape)
    two_axes = config.latent_dim >= 2 and image_data
    decoded = model.decode(_grid_latents(values, config.latent_dim, two_axes))
    title = _manifold_title(config.latent_dim, two_axes, len(values))
    span = f"{values[0]:.2f} … {values[-1]:.2f}"
    if not image_data:
        fig = _strip_figure([(decoded, f"z1: {span}, top to bottom")], title)
        return _save(fig, path)
    # No gaps between the images: the manifold reads as one continuous surface.
    mosaic = tile(as_images(decoded, config.data_shape), len(values), pad=0)
    fig = _mosaic_figure(mosaic, *_value_range(decoded), title=title, xlabel=f"z1: {span}  →",
                         ylabel=f"z2: {span}  →" if two_axes else None)
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


def samples(model, path, n: int = 64, seed: int | None = None) -> Path:
    """n draws from the prior, decoded to the likelihood mean, as a grid."""
    drawn = model.sample(n, seed=seed)
    return image_grid(drawn, path, data_shape=model.config.data_shape,
                      title=f"{n} samples from the prior (likelihood means)")


def loss_curves(history: dict, path) -> Path:
    """Training and validation loss (mean negative ELBO) per epoch."""
    epochs = list(history.get("epoch", []))
    if not epochs:
        raise ValueError("the training history has no epochs to plot")
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if len(epochs) <= 30 else None   # single epochs would be invisible otherwise
    ax.plot(epochs, history["train_loss"], marker=marker, label="train")
    validated = [(e, v) for e, v in zip(epochs, history.get("val_loss", [])) if v is not None]
    if validated:
        ax.plot(*zip(*validated), marker=marker, label="validation (test split)")
        best_epoch, best = min(validated, key=lambda pair: pair[1])
        ax.set_title(f"Loss per epoch (best validation {best:.2f} at epoch {best_epoch})")
    else:
        ax.set_title("Loss per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats per example)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def write_all(model, data, history: dict | None, run_dir) -> list[Path]:
    """Every plot into run_dir (file names in PLOT_FILES); returns the paths written.

    `data`: a datasets.Dataset (its test split is drawn, or the training split when the
    test split is empty), an (x, y) pair, or x alone.  No loss plot without history.
    """
    x, y, label_names, description = _plot_data(data)
    run_dir = Path(run_dir)
    written = [
        latent_scatter(model, x, y, run_dir / PLOT_FILES["latent"], label_names=label_names,
                       description=description),
        manifold_grid(model, run_dir / PLOT_FILES["manifold"]),
        reconstructions(model, x, run_dir / PLOT_FILES["reconstructions"]),
        samples(model, run_dir / PLOT_FILES["samples"]),
    ]
    if history and history.get("epoch"):
        written.append(loss_curves(history, run_dir / PLOT_FILES["loss"]))
    return written


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
def explorer_figure(model, figure: Figure | None = None, z=None):
    """Build the latent explorer on `figure` (a new Agg figure if None): the decoded
    image of z (default 0, the prior mean) above one slider per latent dimension, each
    spanning +-SLIDER_RANGE (the first MAX_SLIDERS dimensions only; the others keep
    their value from z).  Returns (figure, sliders); keep the sliders referenced, or
    matplotlib forgets their callbacks."""
    from matplotlib.widgets import Slider
    config = model.config
    n_sliders = min(config.latent_dim, MAX_SLIDERS)
    z = np.zeros(config.latent_dim, np.float32) if z is None else np.array(z, np.float32)
    if z.shape != (config.latent_dim,):
        raise ValueError(f"z has shape {z.shape}; expected ({config.latent_dim},)")
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
    figure.suptitle(_explorer_title(config.latent_dim, n_sliders, not z[n_sliders:].any()),
                    fontsize=10)
    sliders = []
    for i in range(n_sliders):
        bottom = (slider_in - 0.32 * (i + 1)) / height
        slider_ax = figure.add_axes((0.15, bottom, 0.65, 0.22 / height))
        sliders.append(Slider(slider_ax, f"z{i + 1}", -SLIDER_RANGE, SLIDER_RANGE,
                              valinit=float(z[i]), valfmt="%+.2f"))

    def redraw(_value):
        for i, slider in enumerate(sliders):
            z[i] = slider.val
        view.update(model.decode(z[None])[0])
        figure.canvas.draw_idle()

    for slider in sliders:
        slider.on_changed(redraw)
    return figure, sliders


def save_explorer(model, path, z=None) -> Path:
    """The explorer figure at z (default: the prior mean 0) as a PNG, no display needed."""
    figure, _ = explorer_figure(model, z=z)
    return _save(figure, path)


def explore(model, z=None) -> None:
    """Open the interactive explorer window (sliders start at z, default 0); returns
    when the window is closed."""
    import matplotlib.pyplot as plt
    figure = plt.figure()
    _figure, sliders = explorer_figure(model, figure, z=z)   # noqa: F841  (keeps the sliders alive)
    plt.show()


def _explorer_title(latent_dim: int, n_sliders: int, fixed_at_zero: bool = True) -> str:
    if n_sliders < latent_dim:
        fixed = "stay at 0" if fixed_at_zero else "stay fixed"
        return (f"Latent explorer: sliders for z1–z{n_sliders} of {latent_dim} "
                f"(at most {MAX_SLIDERS} sliders);\n{_dims(n_sliders + 1, latent_dim)} {fixed}")
    return f"Latent explorer: {latent_dim}-D latent, decoded live"


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
            (self.artist,) = ax.plot(np.arange(len(flat)), flat)
            lo, hi = _value_range(flat)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("component")

    def update(self, datum):
        if is_image_shape(self.data_shape):
            self.artist.set_data(as_images(datum[None], self.data_shape)[0])
        else:
            self.artist.set_ydata(np.ravel(datum))


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
    longest_line = max((len(line) for line in (title or "").splitlines()), default=0)
    width = max(left + w * zoom + MARGIN_PX, longest_line * CHAR_PX + 2 * MARGIN_PX)
    left += (width - (left + w * zoom + MARGIN_PX)) // 2    # centre a narrow mosaic under its title
    height = bottom + h * zoom + top
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, w * zoom / width, h * zoom / height))
    ax.imshow(mosaic, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    _no_ticks(ax)
    ax.set_frame_on(False)   # the gaps separate the images; a frame would box in empty cells
    if title:
        ax.set_title(title, fontsize=11)
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
    fig.colorbar(shown, ax=list(axes), label="value")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


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
def _two_dimensional_view(z: np.ndarray):
    """(points (N, 2), axis names): the means themselves in 2-D, else their PCA."""
    if z.shape[1] == 2:
        return z, ("z1 (posterior mean)", "z2 (posterior mean)")
    centred = z - z.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    share = singular ** 2 / max(float(np.sum(singular ** 2)), 1e-30)
    names = (f"PC1 ({100 * share[0]:.0f}% of variance)", f"PC2 ({100 * share[1]:.0f}% of variance)")
    return centred @ basis[:2].T, names


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


def _grid_latents(values: np.ndarray, latent_dim: int, two_axes: bool) -> np.ndarray:
    """Rows of z in mosaic order: z2 from high (top row) to low, z1 from low to high."""
    if not two_axes:
        z = np.zeros((len(values), latent_dim), np.float32)
        z[:, 0] = values
        return z
    z1, z2 = np.meshgrid(values, values[::-1])
    z = np.zeros((z1.size, latent_dim), np.float32)
    z[:, 0], z[:, 1] = z1.ravel(), z2.ravel()
    return z


def _manifold_title(latent_dim: int, two_axes: bool, n: int) -> str:
    grid = f"z = Φ⁻¹(u), u = {MANIFOLD_EDGE:g}…{1 - MANIFOLD_EDGE:g}"
    if two_axes and latent_dim == 2:
        return f"Decoded manifold, {n}×{n}: {grid}"
    if two_axes:
        return f"Decoded manifold, {n}×{n}: z1, z2 varied, {_dims(3, latent_dim)} fixed at 0\n{grid}"
    others = "" if latent_dim == 1 else f", {_dims(2, latent_dim)} fixed at 0"
    return f"Decoded along z1 ({n} steps{others})\n{grid}"


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
