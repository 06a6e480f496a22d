"""Checkpoints: one safetensors file that rebuilds a model (and its optimizer) alone.

Tensors: "params" (the flat buffer) and, once trained, "adam.m" and "adam.v" (the same
layout).  Metadata (strings, each a JSON value): the format tag, the config JSON, the
Adam hyper-parameters and step count, the training history, and two digests:
"tensor_sha256" (the SHA-256 of every tensor's bytes, little-endian, C order) and
"metadata_sha256" (the SHA-256 of every other metadata entry, see `_metadata_digest`).
Writes are atomic (cupyvae.files.write_atomic), so an interrupted run always leaves the
previous complete checkpoint readable.

Reading is all-or-nothing: `load_checkpoint` checks the whole file against its own
config before the caller builds anything, and every fault is a CheckpointError naming
the file and the problem:

* the file: missing, not safetensors, truncated, another format;
* integrity: a tensor or a metadata entry whose digest does not match (a flipped bit
  anywhere in the tensor data or the metadata);
* the config: unparsable or invalid; the parameter count it implies (computed from the
  layer shapes alone, no allocation) differs from the tensors';
* the tensors: missing or unknown names, wrong shape or dtype, NaN/inf, a negative
  second moment `adam.v`;
* the Adam state: not an object, unknown keys, a value of the wrong type or out of range;
* the history: not an object of equal-length lists with the columns `HISTORY_COLUMNS`,
  epochs not 1..n, non-finite numbers.

Checkpoints of the first format ("cupyvae-checkpoint-1", written before the digests
existed) still load: everything above is checked except integrity, so a flipped bit
that leaves a finite, in-range value (most bits of a float32) goes unnoticed there.
They are accepted rather than refused because run folders trained before the digests
must stay resumable, and every structural fault is still caught; saving such a model
again writes the current format, with digests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import VAEConfig
from .files import JSONError, parse_json, write_atomic
from .numbers import exact
from .optim import Adam
from .spec import ModelSpec

FORMAT = "cupyvae-checkpoint-2"
LEGACY_FORMAT = "cupyvae-checkpoint-1"   # no digests: see the module docstring
TENSOR_DIGESTS = "tensor_sha256"
METADATA_DIGEST = "metadata_sha256"
PARAMS, ADAM_M, ADAM_V = "params", "adam.m", "adam.v"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "seconds")
# Adam state keys every checkpoint has held since the first format; fields added to Adam
# later are optional (their defaults apply to older files).
ADAM_REQUIRED_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay", "step_count")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or inconsistent."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint that passed every check: `params` has the config's layout,
    `optimizer` is None for an untrained model, else Adam's constants and step count, with
    its moments (m, v) in `moments` (the executor's buffers, cupyvae.executors)."""
    path: Path
    config: VAEConfig
    params: np.ndarray
    history: dict[str, list]
    optimizer: Adam | None
    moments: tuple[np.ndarray, np.ndarray] | None


# ---------------------------------------------------------------------- writing
def save_checkpoint(path, tensors: dict[str, np.ndarray], metadata: dict[str, object]) -> None:
    """Write `tensors` and `metadata` (JSON-encodable values) with their digests, atomically."""
    from safetensors.numpy import save
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    meta[TENSOR_DIGESTS] = json.dumps({k: tensor_digest(v) for k, v in tensors.items()})
    meta[METADATA_DIGEST] = json.dumps(_metadata_digest(meta))
    write_atomic(path, save(tensors, metadata=meta))


def tensor_digest(array: np.ndarray) -> str:
    """SHA-256 of the array's bytes as safetensors stores them (little-endian, C order)."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<"), copy=False).data).hexdigest()


def _metadata_digest(raw_meta: dict[str, str]) -> str:
    """SHA-256 of the metadata strings other than this digest, as sorted-key JSON."""
    covered = {k: v for k, v in raw_meta.items() if k != METADATA_DIGEST}
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- reading
def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(tensors, metadata with JSON values decoded), digests verified; the contents are
    not yet checked against the config (load_checkpoint does that).  CheckpointError
    names the file."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {_not_a_file(path)}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    fmt = raw_meta.get("format")
    if fmt not in (FORMAT, LEGACY_FORMAT):
        raise CheckpointError(f"{path} is not a cupyvae checkpoint "
                              f"(format {fmt!r}, expected {FORMAT!r})")
    if fmt == FORMAT:
        _verify_digests(path, tensors, raw_meta)
    try:
        meta = {k: parse_json(v) for k, v in raw_meta.items() if k != "format"}
    except JSONError as exc:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({exc})") from None
    return tensors, meta


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a file, in words."""
    if path.is_dir():
        return "is a folder, not a file"
    if path.is_symlink():
        return "is a symbolic link to nothing readable (dangling or a loop)"
    return "does not exist"


def _verify_digests(path: Path, tensors: dict[str, np.ndarray], raw_meta: dict[str, str]) -> None:
    if raw_meta.get(METADATA_DIGEST) != json.dumps(_metadata_digest(raw_meta)):
        raise CheckpointError(f"checkpoint {path} is corrupt: its metadata does not match its "
                              f"SHA-256 digest ({METADATA_DIGEST})")
    try:
        digests = parse_json(raw_meta[TENSOR_DIGESTS])
    except (KeyError, JSONError):
        digests = None
    if not isinstance(digests, dict) or set(digests) != set(tensors):
        raise CheckpointError(f"checkpoint {path} is corrupt: {TENSOR_DIGESTS} does not list "
                              f"exactly its tensors {sorted(tensors)}")
    for name, array in tensors.items():
        if tensor_digest(array) != digests[name]:
            raise CheckpointError(f"checkpoint {path} is corrupt: tensor {name!r} does not match "
                                  "its SHA-256 digest (the data changed after it was written)")


def load_checkpoint(path) -> Checkpoint:
    """Read and fully validate a checkpoint (see the module docstring for every check)."""
    tensors, meta = read_checkpoint(path)
    return validate_checkpoint(Path(path), tensors, meta)


def validate_checkpoint(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> Checkpoint:
    """Check decoded checkpoint contents against their own config; CheckpointError names
    `path` and the first problem found."""
    def fail(problem: str):
        raise CheckpointError(f"checkpoint {path}: {problem}")

    config = _config(meta, fail)
    layout = _layout(config, fail)
    size = layout.size
    adam_state = meta.get("adam", _MISSING)
    if adam_state is _MISSING:
        fail("metadata has no 'adam' entry")
    expected = {PARAMS} | ({ADAM_M, ADAM_V} if adam_state is not None else set())
    if set(tensors) != expected:
        fail(f"holds tensors {sorted(tensors)}; expected {sorted(expected)} "
             f"({'with' if adam_state is not None else 'without'} Adam state)")
    for name in (n for n in (PARAMS, ADAM_M, ADAM_V) if n in expected):
        _check_tensor(name, tensors[name], size, config, fail)
    _check_recorded_layout(meta.get("layout"), layout, config, fail)
    optimizer, moments = None, None
    if adam_state is not None:
        optimizer, moments = _optimizer(adam_state, fail), (tensors[ADAM_M], tensors[ADAM_V])
    history = _history(meta.get("history", _MISSING), fail)
    return Checkpoint(path, config, tensors[PARAMS], history, optimizer, moments)


_MISSING = object()


def _config(meta: dict, fail) -> VAEConfig:
    text = meta.get("config")
    if not isinstance(text, str):
        fail(f"metadata has no config (found {type(text).__name__})")
    try:
        return VAEConfig.from_json(text)
    except (TypeError, ValueError, AttributeError) as exc:
        fail(f"unusable config ({exc})")


def _layout(config: VAEConfig, fail):
    """The flat-buffer layout the config implies: from shapes alone, nothing allocated."""
    try:
        return ModelSpec(config).layout
    except (TypeError, ValueError) as exc:
        fail(f"unusable config ({exc})")


def _check_recorded_layout(recorded, layout, config: VAEConfig, fail) -> None:
    """The shape of every tensor as saved must be the one the checkpoint's own config gives
    (e.g. prior tensors of another K).  The flat buffer's size cannot tell: tensors start at
    aligned offsets, so K = 3 and K = 4 may take the same room.  Checkpoints written before
    the layout was saved hold no prior tensors (no prior had any); one that claims a prior
    with tensors but records no layout is refused."""
    wanted = {e.name: list(e.shape) for e in layout.entries}
    prior = (f"prior {config.prior!r}, prior_components {config.prior_components}, "
             f"latent_dim {config.latent_dim}, data_dim {config.data_dim}")
    if recorded is None:
        if any(name.startswith("prior.") for name in wanted):
            fail(f"records no tensor layout, so its prior tensors cannot be checked against its "
                 f"config ({prior})")
        return
    if not isinstance(recorded, dict):
        fail(f"has a corrupt layout entry ({type(recorded).__name__})")
    for name in sorted(set(wanted) | set(recorded)):
        if recorded.get(name) != wanted.get(name):
            fail(f"tensor {name!r} is saved with shape {recorded.get(name)} but its config "
                 f"({prior}) needs {wanted.get(name)}")


def _check_tensor(name: str, array: np.ndarray, size: int, config: VAEConfig, fail) -> None:
    if array.shape != (size,) or array.dtype != np.float32:
        # A prior's K changes the size too (the VampPrior's pseudo-inputs take K x D floats).
        prior = ("" if config.prior_components is None else
                 f", prior={config.prior!r}, prior_components={config.prior_components}")
        fail(f"tensor {name!r} is {array.dtype} of shape {array.shape}, but the config "
             f"(data_shape={config.data_shape}, hidden={config.hidden}, "
             f"latent_dim={config.latent_dim}{prior}) implies float32 of shape ({size},)")
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        fail(f"tensor {name!r} holds {int(array.size - finite.sum())} NaN/inf values "
             f"(first at index {first})")
    if name == ADAM_V and (array < 0).any():
        first = int(np.flatnonzero(array < 0)[0])
        fail(f"tensor {name!r} (Adam's second moment, a running mean of squares) holds "
             f"negative values (first {exact(array[first])} at index {first})")


def _optimizer(state, fail) -> Adam:
    if not isinstance(state, dict):
        fail(f"Adam state must be an object, got {state!r}")
    fields = {f.name: f for f in dataclasses.fields(Adam) if _is_state_field(f)}
    unknown = sorted(set(state) - set(fields))
    if unknown:
        fail(f"Adam state has unknown keys {unknown}; known: {sorted(fields)}")
    missing = [k for k in ADAM_REQUIRED_KEYS if k not in state]
    if missing:
        fail(f"Adam state lacks {missing}")
    for key, value in state.items():
        problem = _type_problem(value, fields[key].type)
        if problem:
            fail(f"Adam state {key!r} = {value!r}: {problem}")
    try:
        return Adam(**state)
    except (TypeError, ValueError) as exc:
        fail(f"invalid Adam state ({exc})")


def _is_state_field(field: dataclasses.Field) -> bool:
    """Adam's hyper-parameters and counters (not private fields, nor arrays, should Adam
    ever hold some: the moments are tensors of their own)."""
    return not field.name.startswith("_") and "ndarray" not in str(field.type)


# JSON value checks by the field's annotation (a string: optim.py uses postponed annotations).
_SCALAR_CHECKS = {
    "float": lambda v: (None if _is_number(v) and math.isfinite(v)
                        else "expected a finite number"),
    "int": lambda v: (None if isinstance(v, int) and not isinstance(v, bool) and v >= 0
                      else "expected a non-negative integer"),
    "bool": lambda v: None if isinstance(v, bool) else "expected true or false",
    "str": lambda v: None if isinstance(v, str) else "expected a string",
}


def _type_problem(value, annotation) -> str | None:
    """None if the JSON value fits the annotation ("float", "int | None", ...), else why not."""
    kinds = [part.strip() for part in str(annotation).split("|")]
    if "None" in kinds:
        if value is None:
            return None
        kinds.remove("None")
    checks = [_SCALAR_CHECKS.get(kind) for kind in kinds]
    if None in checks or len(checks) != 1:
        return f"cannot validate a field annotated {annotation!r}"
    return checks[0](value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history(history, fail) -> dict[str, list]:
    if history is _MISSING:
        fail("metadata has no 'history' entry")
    if not isinstance(history, dict):
        fail(f"history must be an object of per-epoch lists, got {history!r:.80}")
    missing = [c for c in HISTORY_COLUMNS if c not in history]
    if missing:
        fail(f"history lacks the columns {missing}")
    lengths = {}
    for column, values in history.items():
        if not isinstance(values, list):
            fail(f"history column {column!r} must be a list, got {values!r:.80}")
        lengths[column] = len(values)
    if len(set(lengths.values())) > 1:
        fail(f"history columns have different lengths {lengths}")
    if history["epoch"] != list(range(1, len(history["epoch"]) + 1)):
        fail(f"history epochs must be 1, 2, ..., n; got {history['epoch']!r:.80}")
    for column, values in history.items():
        optional = column not in ("epoch", "train_loss", "seconds")   # val_loss: None w/o validation
        for i, value in enumerate(values):
            if value is None and optional:
                continue
            if not (_is_number(value) and math.isfinite(value)):
                fail(f"history column {column!r} entry {i} is {value!r}; expected a finite number")
    return history
