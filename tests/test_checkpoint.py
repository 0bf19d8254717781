"""Checkpoints round-trip exactly and refuse untrusted or mismatched input with clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from ase.build import bulk
from contracts import crystal_inputs, molecule_inputs

from models.checkpoint import CheckpointError, config_path, load_checkpoint, save_checkpoint
from models.config import CSPNetConfig, EGNNConfig
from models.cspnet import CSPNet
from models.egnn import EGNN

EGNN_CFG = EGNNConfig(hidden=8, layers=2, time_embedding="sinusoidal", time_dim=4)


class NotATensor:
    """A custom class: unpickling it would import code, which weights_only must refuse."""


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = EGNN(EGNN_CFG)
    return model, save_checkpoint(model, tmp_path / "run" / "egnn.pt")


def test_egnn_round_trip_gives_identical_scores(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert isinstance(loaded, EGNN) and loaded.cfg == EGNN_CFG
    inp = molecule_inputs(("CH3CH2OH", "H2O"), torch.float32)
    x = torch.cat([inp.pos, inp.h], dim=1)
    assert torch.equal(loaded(x, inp.t, inp.batch), model(x, inp.t, inp.batch))
    meta = json.loads(config_path(path).read_text())
    assert meta["parameters"] == EGNN_CFG.parameter_count()


def test_cspnet_round_trip_gives_identical_scores(tmp_path):
    torch.manual_seed(0)
    model = CSPNet(CSPNetConfig(hidden=8, layers=1, num_freqs=2, time_dim=4))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "csp.pt"))
    inp = crystal_inputs([bulk("NaCl", "rocksalt", a=5.64)], dtype=torch.float32)
    a = model(inp.frac, inp.lattice, inp.h, inp.t, inp.batch)
    b = loaded(inp.frac, inp.lattice, inp.h, inp.t, inp.batch)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def _edit_meta(path, edit):
    meta = json.loads(config_path(path).read_text())
    edit(meta)
    config_path(path).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["config"].update(hidden_size=8), "hidden_size"),
        (lambda m: m["config"].update(layers="many"), "layers"),
        (lambda m: m["config"].update(hidden=-3), "hidden"),
        (lambda m: m.update(model="resnet"), "unknown model 'resnet'"),
        (lambda m: m.update(version=99), "v1"),
        (lambda m: m.update(extra=1), "unknown top-level keys"),
        (lambda m: m["config"].update(hidden=16), "shapes do not fit"),
        (lambda m: m["config"].update(attention=False), "missing .*att_mlp"),
    ],
    ids=["unknown-key", "ill-typed", "negative", "model", "version", "top-level", "shape", "names"],
)
def test_bad_config_is_refused_with_reason(saved, edit, message):
    _, path = saved
    _edit_meta(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_and_corrupt_files_are_refused(saved, tmp_path):
    _, path = saved
    config_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="config file missing"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_pickled_objects_are_refused(saved):
    """weights_only=True refuses arbitrary classes; plain non-tensor values are refused too."""
    model, path = saved
    torch.save({"payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="cannot read weights safely"):
        load_checkpoint(path)
    torch.save({**model.state_dict(), "embedding.weight": 3}, path)
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        load_checkpoint(path)
