"""examples/vae.ipynb runs end to end, headless, with small settings, and is committed with the
outputs of its full run.

The notebook reads its sizes from environment variables (its parameter cell), so the run here
is the committed notebook itself with 1 epoch and 300 training examples, executed by nbclient
in memory: the file is never written.  Every cell error fails the test (nbclient raises
CellExecutionError, naming the cell).  It runs twice: with the faces this machine has (the
synthetic ones unless Frey Face is cached) and with a stand-in Frey file, so both branches of
the faces section run (about 10 s each on an idle core).
"""
from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest


def require(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed; running examples/vae.ipynb "
                                              "needs the extra: pip install 'cupyvae[notebook]'")


nbformat = require("nbformat")
nbclient = require("nbclient")
require("ipykernel")
require("ipywidgets")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "vae.ipynb"
SMALL_SETTINGS = {"CUPYVAE_NOTEBOOK_EPOCHS": "1", "CUPYVAE_NOTEBOOK_LIMIT": "300",
                  "CUPYVAE_NOTEBOOK_DOWNLOAD": "0"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The pictures the notebook shows: digits latent + manifold, training faces, faces latent +
# manifold, the slider sweeps, the Laplace-prior latent.
PICTURES = 7
CELL_TIMEOUT_S = 300


def rich_outputs(notebook) -> list[dict]:
    return [output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type in ("display_data", "execute_result")]


def pictures(notebook) -> int:
    return sum("image/png" in data for data in rich_outputs(notebook))


def pictures_are_sane(notebook) -> None:
    """Every picture decodes as a PNG of a real figure: big enough, and not one flat colour."""
    from matplotlib.image import imread
    for data in rich_outputs(notebook):
        if "image/png" in data:
            image = imread(io.BytesIO(base64.b64decode(data["image/png"])), format="png")
            assert min(image.shape[:2]) >= 150, f"a picture of {image.shape[:2]} pixels"
            assert image[..., :3].std() > 0.05, "a picture of one flat colour"


def slider_descriptions(notebook) -> list[str]:
    """The slider labels in the widget state nbclient saved with the notebook."""
    state = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return sorted(model["state"]["description"] for model in state.get("state", {}).values()
                  if model.get("model_name") == "FloatSliderModel")


def printed_numbers_are_finite(notebook) -> None:
    text = stream_text(notebook)
    assert "negative ELBO" in text, "the notebook no longer prints its losses"
    assert not re.search(r"\b(nan|inf)\b", text, re.I), f"a NaN or inf in the printed output:\n{text}"


def has_slider_panel(notebook) -> bool:
    return any(WIDGET_VIEW in data and data.get("text/plain", "").startswith("VBox(")
               for data in rich_outputs(notebook))


def stream_text(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream")


def require_a_digit_dataset() -> None:
    """The notebook trains on MNIST or, without it, Fashion-MNIST (which .ci/run installs)."""
    from cupyvae.datasets import DatasetError, load_dataset
    for name in ("mnist", "fashion-mnist"):
        try:
            load_dataset(name, download=False)
            return
        except DatasetError:
            continue
    pytest.skip("neither MNIST nor Fashion-MNIST is on this machine; .ci/run installs dataset-fashion-mnist")


def test_the_committed_notebook_holds_the_outputs_of_its_full_run():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        "the committed notebook was not run top to bottom in one kernel"
    errors = [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert not errors, f"the committed notebook holds errors: {errors[0]}"
    assert "EPOCHS = 30, LIMIT = None, DOWNLOAD = False: the full settings" in stream_text(notebook), "the committed outputs are not from the full settings"
    assert pictures(notebook) == PICTURES
    pictures_are_sane(notebook)
    printed_numbers_are_finite(notebook)
    assert has_slider_panel(notebook)
    assert slider_descriptions(notebook) == ["expression", "pose"], "the slider panel's widget state was not saved"


def stand_in_frey_file(data: Path) -> None:
    """A file the Frey Face loader accepts (random frames, the real file's layout), so that the
    notebook takes its Frey branch: the real file is not shipped and rarely cached."""
    import scipy.io
    from cupyvae.datasets import FREY_FILENAME, FREY_IMAGE_SHAPE, FREY_NUM_IMAGES
    (data / "frey").mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 256, (FREY_IMAGE_SHAPE[0] * FREY_IMAGE_SHAPE[1], FREY_NUM_IMAGES))
    scipy.io.savemat(data / "frey" / FREY_FILENAME, {"ff": frames.astype(np.uint8)})


@pytest.mark.parametrize("faces", ["as found", "frey stand-in"])
def test_the_notebook_runs_headless_with_small_settings(monkeypatch, tmp_path, faces):
    if faces == "frey stand-in":
        # A data folder of our own: the notebook's Frey branch runs on a stand-in file.
        monkeypatch.setenv("CUPYVAE_DATA", str(tmp_path / "data"))
        stand_in_frey_file(tmp_path / "data")
    require_a_digit_dataset()
    for name, value in SMALL_SETTINGS.items():
        monkeypatch.setenv(name, value)
    # The kernel imports this checkout's cupyvae, and nothing may need a display.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("DISPLAY", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    committed = NOTEBOOK.read_bytes()
    notebook = nbformat.reads(committed.decode("utf-8"), as_version=4)

    nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()

    assert NOTEBOOK.read_bytes() == committed, "running the notebook changed the committed file"
    text = stream_text(notebook)
    assert "EPOCHS = 1, LIMIT = 300, DOWNLOAD = False: reduced settings" in text
    if faces == "frey stand-in":
        assert "Frey Face: 300 training and 200 test frames" in text
    else:
        assert "Frey Face: 300 training" in text or "uses 2000 synthetic 28x20 faces" in text
    assert pictures(notebook) == PICTURES
    pictures_are_sane(notebook)
    printed_numbers_are_finite(notebook)
    assert has_slider_panel(notebook)
    assert slider_descriptions(notebook) == ["expression", "pose"]
    assert list(work.iterdir()) == [], "the notebook wrote files into its working folder"
