"""Checkpoints: one safetensors file that rebuilds a model (and its optimizer) alone.

Tensors: "params" (the flat buffer) and, once trained, "adam.m" and "adam.v".  Metadata
(strings): the format tag, the config JSON, the Adam hyper-parameters and step, and the
training history.  Writes are atomic (temporary file, fsync, rename), so an interrupted
run always leaves the previous complete checkpoint readable.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import write_atomic

FORMAT = "cupyvae-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or inconsistent."""


def save_checkpoint(path, tensors: dict[str, np.ndarray], metadata: dict[str, object]) -> None:
    from safetensors.numpy import save
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta))


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(tensors, metadata with JSON values decoded); CheckpointError names the file."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    if raw_meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cupyvae checkpoint "
                              f"(format {raw_meta.get('format')!r}, expected {FORMAT!r})")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({exc})") from None
    return tensors, meta
