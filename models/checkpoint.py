"""Checkpoints: weights as a ``state_dict`` file plus the model's config as JSON.

``save_checkpoint(model, path)`` writes ``path`` (``torch.save`` of the ``state_dict``, tensors
only) and ``path.with_suffix('.json')``::

    {"format": "ldsm-checkpoint", "version": 1, "model": "egnn" | "cspnet", "config": {...},
     "parameters": <int>, "run": {...}}

``run`` (optional) is whatever JSON the caller attaches: the training flow stores the recipe, the
atom-count histogram and the training step there, so a checkpoint alone can generate.

A checkpoint is untrusted input: the weights are read with ``torch.load(weights_only=True)`` (no
pickled code runs), the JSON is validated against the typed config (unknown or ill-typed keys are
refused), and the weights must match the rebuilt model exactly in names and shapes. Every problem
raises :class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import torch
from torch import nn

from models.config import CSPNetConfig, EGNNConfig
from models.cspnet import CSPNet
from models.egnn import EGNN

FORMAT, VERSION = "ldsm-checkpoint", 1
# The models a checkpoint may name: (model class, its config class).
MODELS: dict[str, tuple[type[nn.Module], type[pydantic.BaseModel]]] = {
    "egnn": (EGNN, EGNNConfig),
    "cspnet": (CSPNet, CSPNetConfig),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason."""


def _name_of(model: nn.Module) -> str:
    for name, (cls, _) in MODELS.items():
        if type(model) is cls:
            return name
    raise CheckpointError(f"cannot save a {type(model).__name__}: known models are {list(MODELS)}")


def config_path(path: str | Path) -> Path:
    """The JSON file that goes with weights at ``path``."""
    return Path(path).with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | Path, run: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` and its config (plus ``run``, if given) to
    ``config_path(path)``, each atomically (a temporary file renamed into place); returns ``path``."""
    name = _name_of(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "config": model.cfg.model_dump(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if run is not None:
        meta["run"] = run
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    tmp_json = path.with_name(path.name + ".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    tmp_json.replace(config_path(path))
    return path


def _read_meta(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{json_path}: config file missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{json_path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{json_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{json_path}: not an {FORMAT} v{VERSION} file "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
        )
    unknown = set(meta) - {"format", "version", "model", "config", "parameters", "run"}
    if unknown:
        raise CheckpointError(f"{json_path}: unknown top-level keys {sorted(unknown)}")
    if meta.get("model") not in MODELS:
        raise CheckpointError(
            f"{json_path}: unknown model {meta.get('model')!r}; known models are {list(MODELS)}"
        )
    return meta


def read_run(path: str | Path) -> dict:
    """The ``run`` metadata saved with the checkpoint at ``path`` (``{}`` when there is none)."""
    return _read_meta(config_path(path)).get("run") or {}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` (weights) and ``config_path(path)`` (config)."""
    path = Path(path)
    meta = _read_meta(config_path(path))
    model_cls, config_cls = MODELS[meta["model"]]
    try:
        cfg = config_cls.model_validate(meta.get("config"))
    except pydantic.ValidationError as err:
        raise CheckpointError(
            f"{config_path(path)}: invalid {meta['model']} config:\n{err}"
        ) from err
    model = model_cls(cfg)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: weights file missing") from err
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot read weights safely ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the config: missing {missing}, unexpected {unexpected}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path}: weight shapes do not fit the config: {wrong}")
    model.load_state_dict(state)
    return model
