"""The latent explorer inside a Jupyter notebook: one slider per latent dimension and the
decoded image, updated live -- the original notebook's "pose" and "expression" sliders.

    import cupyvae
    panel = cupyvae.explore(model, x=data.x_test)    # sliders start at the codes' mean
    panel                                            # the notebook cell displays it

It returns an ipywidgets panel (ipywidgets is the optional extra `cupyvae[notebook]`); the
desktop window of the CLI (`cupyvae explore`) is cupyvae.plots.explore.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from .options import check_argument, positive_int
from .plots import MAX_SLIDERS, _DatumView, is_image_shape, slider_ranges

IMAGE_PIXELS = 280          # the decoded image is shown about this many pixels wide
SLIDER_STEP = 0.02


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def explore(model, x=None, *, names: Sequence[str] | None = None, max_sliders: int = MAX_SLIDERS):
    """An ipywidgets panel: the decoded image of a latent point above one slider per latent
    dimension (the first `max_sliders`; the others stay at their starting value).

    With data `x` (N, *data_shape) the sliders start at the mean of the posterior means
    of x and span where the codes lie; without, they start at 0 and span +-3 (the N(0, I)
    prior) -- the spans of the CLI's explorer (cupyvae.plots.slider_ranges).
    `names` labels the sliders (the original notebook's ("pose", "expression")).

    The panel has `.sliders`, `.image` (a widgets.Image holding PNG bytes) and `.z` (the
    current latent point, float32 (latent_dim,)).  Raises MissingExtra without ipywidgets,
    OptionError (a ValueError) for a max_sliders that is no integer >= 1.
    """
    max_sliders = check_argument("max_sliders", max_sliders, positive_int)
    widgets = _ipywidgets()
    latent_dim = model.config.latent_dim
    n_sliders = min(latent_dim, max_sliders)
    if names is not None and len(names) != n_sliders:
        raise ValueError(f"{len(names)} slider names for {n_sliders} sliders")
    z, ranges = _start_and_ranges(model, x)
    image = widgets.Image(value=decoded_png(model, z), format="png",
                          layout=widgets.Layout(width=f"{IMAGE_PIXELS}px"))
    sliders = []
    for i in range(n_sliders):
        slider = widgets.FloatSlider(value=float(z[i]), min=float(ranges[i, 0]),
                                     max=float(ranges[i, 1]), step=SLIDER_STEP,
                                     description=names[i] if names else f"z{i + 1}",
                                     continuous_update=True, readout_format="+.2f")
        slider.observe(_updater(model, z, i, image), names="value")
        sliders.append(slider)
    title = widgets.HTML(f"<b>Latent explorer</b>: {latent_dim}-D latent"
                         + (f", sliders for the first {n_sliders}" if n_sliders < latent_dim else ""))
    panel = widgets.VBox([title, image, *sliders])
    panel.sliders, panel.image, panel.z = sliders, image, z
    return panel


def decoded_png(model, z: np.ndarray) -> bytes:
    """The likelihood mean of one latent point as PNG bytes, drawn as the CLI's explorer
    draws it (images in grey or colour, other data as a line plot)."""
    from matplotlib.figure import Figure
    datum = model.decode(np.asarray(z, np.float32)[None])[0]
    shape = model.config.data_shape
    if is_image_shape(shape):
        figure = Figure(figsize=(IMAGE_PIXELS / 100, IMAGE_PIXELS / 100), dpi=100)
        axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    else:
        figure = Figure(figsize=(4, 2.5), dpi=100)
        axes = figure.add_subplot()
    _DatumView(axes, shape, datum)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _updater(model, z: np.ndarray, index: int, image):
    def update(change) -> None:
        z[index] = change["new"]
        image.value = decoded_png(model, z)
    return update


def _start_and_ranges(model, x) -> tuple[np.ndarray, np.ndarray]:
    """(the starting point z, float32 (latent_dim,); the slider spans (latent_dim, 2)):
    the mean code of x, or 0 without data (a single code at the prior's mean)."""
    codes = (np.zeros((1, model.config.latent_dim), np.float32) if x is None
             else model.encode(x))
    z = codes.mean(axis=0).astype(np.float32)
    return z, slider_ranges(codes, z)


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise MissingExtra("cupyvae.explore needs ipywidgets, which comes with the notebook "
                           "extra: pip install 'cupyvae[notebook]'") from None
    return ipywidgets
