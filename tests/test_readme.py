"""The README is the front door: every command and every Python block in it runs as written.

The fenced ```bash and ```python blocks are extracted in order and run, as written, in one
scratch folder (later blocks use the run folder the first one trains), with `cupyvae` and
`python` on PATH meaning this checkout.  An HTML comment on the line before a block marks
one that is not run here, and the README says why next to it:

    <!-- readme-test: setup -->          installs the system and Python packages: not run;
                                         the test checks what it installs is present
                                         (and skips where Fashion-MNIST is not installed,
                                         like the other real-data tests)
    <!-- readme-test: needs-display -->  opens a window
    <!-- readme-test: needs-gpu -->      needs a CUDA GPU (the GPU suite runs these)
    <!-- readme-test: test-suite -->     is the test suite itself
    <!-- readme-test: sketch -->         Python whose method bodies are elided

Blocks that are not run are still checked: bash with `bash -n` and every `cupyvae ...` line
parsed by the real command line (so an unknown flag or a misplaced argument fails, as the
README's old `train --resume runs/fashion` did); Python is compiled and its imports run.
Every file the README says a command writes must exist afterwards.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKERS = {"setup", "needs-display", "needs-gpu", "test-suite", "sketch"}
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*(?P<marker>[\w-]+)\s*-->\s*\n)?"
                   r"^```(?P<language>bash|python)\n(?P<code>.*?)^```", re.M | re.S)
# What the README says the commands write, relative to the scratch folder.
PROMISED_FILES = [
    "runs/fashion/config.json", "runs/fashion/checkpoint.safetensors", "runs/fashion/metrics.csv",
    "runs/fashion/latent.png", "runs/fashion/manifold.png", "runs/fashion/reconstructions.png",
    "runs/fashion/samples.png", "runs/fashion/loss.png", "runs/fashion/evaluation.json",
    "runs/fashion/samples-64.png", "codes.csv", "explorer.png", "model.safetensors",
    "runs/quick/config.json", "runs/vamp/pseudo_inputs.png",
]


@dataclass
class Block:
    language: str
    code: str
    marker: str | None
    line: int

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.language}{', ' + self.marker if self.marker else ''})"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(m["language"], m["code"], m["marker"], text.count("\n", 0, m.start("code")))
            for m in BLOCK.finditer(text)]


def cupyvae_command_lines(code: str) -> list[list[str]]:
    """The argument lists of every `cupyvae ...` command in a bash block."""
    commands = []
    for line in code.splitlines():
        for part in re.split(r"&&|;|\|\|", line.split(" #")[0]):
            words = shlex.split(part, comments=True)
            if words and words[0] == "cupyvae":
                commands.append(words[1:])
    return commands


def parse_with_the_real_cli(arguments: list[str]) -> None:
    """Let click parse the command line as `cupyvae` would, without running it."""
    from cupyvae.cli import main
    name, *rest = arguments
    group_context = click.Context(main, info_name="cupyvae")
    command = main.get_command(group_context, name)
    if command is None:
        raise click.UsageError(f"no such command {name!r}")
    command.make_context(name, rest, parent=group_context)


# ---------------------------------------------------------------------- checks without running
def test_every_block_is_marked_with_a_known_marker_or_none():
    blocks = readme_blocks()
    assert len(blocks) >= 8, "the README lost its code blocks (or the extraction broke)"
    for block in blocks:
        assert block.marker in MARKERS | {None}, f"{block}: unknown marker {block.marker!r}"
    text = README.read_text()
    fences = re.findall(r"^```(\w*)$", text, re.M)
    opened = [lang for lang in fences if lang]
    assert sorted(set(opened)) <= ["bash", "python"], f"blocks in other languages: {opened}"


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.language == "bash"], ids=str)
def test_bash_blocks_parse_and_their_cupyvae_commands_exist(block):
    result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert result.returncode == 0, f"{block}: {result.stderr}"
    for arguments in cupyvae_command_lines(block.code):
        try:
            parse_with_the_real_cli(arguments)
        except click.ClickException as exc:
            pytest.fail(f"{block}: `cupyvae {shlex.join(arguments)}`: {exc.format_message()}")


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.language == "python"], ids=str)
def test_python_blocks_compile(block):
    compile(block.code, str(block), "exec")


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.marker == "sketch"], ids=str)
def test_sketches_import_what_they_use(block):
    imports = [node for node in ast.parse(block.code).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports, f"{block}: a sketch with no imports checks nothing"
    exec(compile(ast.Module(imports, type_ignores=[]), str(block), "exec"), {})


def test_the_readme_promises_the_files_this_test_checks():
    text = README.read_text()
    for promised in PROMISED_FILES:
        assert Path(promised).name in text, f"README no longer mentions {promised}"


# ---------------------------------------------------------------------- running them
def require_setup() -> None:
    """What the `setup` block installs: cupyvae (this checkout) and Fashion-MNIST."""
    from cupyvae.datasets import DatasetError, load_dataset
    try:
        load_dataset("fashion-mnist", download=False)
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST not installed ({exc}); .ci/run installs dataset-fashion-mnist")


def scratch_environment(tmp_path: Path) -> dict:
    """PATH with `cupyvae` and `python` meaning this checkout; no display."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "cupyvae"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cupyvae.cli "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "CUPYVAE_DEBUG")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def run_block(block: Block, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        script = cwd / f"readme_block_{block.line}.py"
        script.write_text(block.code)
        command = [sys.executable, str(script)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path):
    """Every unmarked block, in order, in one folder; then the files the README promises."""
    require_setup()
    env = scratch_environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run(["python", "-c", "import cupyvae; print(cupyvae.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(ROOT / "cupyvae" / "__init__.py"), where
    ran = 0
    for block in readme_blocks():
        if block.marker is not None:
            continue
        result = run_block(block, work, env)
        assert result.returncode == 0, (f"{block} failed (exit {result.returncode}):\n{block.code}\n"
                                        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
        assert "Traceback" not in result.stderr, f"{block}:\n{result.stderr[-3000:]}"
        ran += 1
    assert ran >= 5
    missing = [name for name in PROMISED_FILES if not (work / name).is_file()]
    assert not missing, f"the README's commands did not write {missing}"


def test_every_test_the_readme_names_exists():
    """The Reliability section backs each promise with `tests/<file>.py::<test>` names."""
    named = re.findall(r"`(test_\w+)::(test_\w+)`", (ROOT / "README.md").read_text())
    assert len(named) >= 20, named
    missing = [f"{module}::{test}" for module, test in named
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / f"{module}.py").read_text(), re.M)]
    assert not missing, f"the README names tests that do not exist: {missing}"


# ---------------------------------------------------------------------- what the README claims
def paragraph(starting: str) -> str:
    text = README.read_text()
    start = text.index(starting)
    return text[start:text.index("\n\n", start)]


def test_the_quick_examples_split_is_what_training_reports():
    from cupyvae import runs
    from cupyvae.training import split_validation
    command = next(words for block in readme_blocks() if block.language == "bash"
                   for words in cupyvae_command_lines(block.code) if "runs/quick" in words)
    limit = int(command[command.index("--limit") + 1])
    fraction = float(command[command.index("--val-fraction") + 1])
    train, val = split_validation(limit, fraction, seed=0)
    reported = (f"{len(train)} examples, validation on "
                + runs._validation_words({"validation_examples": len(val),
                                          "validation": f"{fraction:g} of the train split"}))
    assert f"`{reported}`" in README.read_text()


def test_the_help_quick_start_does_not_reuse_a_readme_run_folder():
    from click.testing import CliRunner
    from cupyvae.cli import main
    help_text = CliRunner().invoke(main, ["--help"]).output
    quick_start = re.search(r"Quick start:\s+cupyvae (.*)", help_text)[1].split()
    out = quick_start[quick_start.index("--out") + 1]
    readme_folders = {words[words.index("--out") + 1] for block in readme_blocks()
                      if block.language == "bash" for words in cupyvae_command_lines(block.code) if "--out" in words}
    assert readme_folders and out not in readme_folders


def test_the_readme_says_which_datasets_download_and_from_where():
    from cupyvae import datasets
    text = paragraph("Fashion-MNIST comes from Debian's")
    for name in datasets.DATASETS.names():
        assert f"`{name}`" in text, f"the README does not say where {name} comes from"
    for mirrors in (datasets.MNIST_MIRRORS, datasets.FREY_MIRRORS, datasets.BINARIZED_MNIST_MIRRORS):
        hosts = [re.sub(r"^https?://(www\.)?", "", url).split("/")[0] for url in mirrors]
        assert any(host.split(".")[0] in text for host in hosts), f"none of {hosts} is named"
    assert "`.npy`, `.npz` and `.csv` files are read locally" in text


def test_the_readme_says_which_likelihoods_are_densities():
    from cupyvae.distributions import LIKELIHOODS
    text = paragraph("**Which log p(x) is a log-likelihood.**")
    masses, densities = text.split("are mass functions")[0], text.split("are densities")[0]
    densities = densities[len(masses):]
    for name in LIKELIHOODS.names():
        listed_in = masses if LIKELIHOODS.get(name).discrete else densities
        assert f"`{name}`" in listed_in, f"{name} is not listed as a " + (
            "mass function" if LIKELIHOODS.get(name).discrete else "density")
    assert "cross-entropy, not a normalised density" in text
