"""Mistaken arguments to save_checkpoint / load_checkpoint fail at once with a message naming
the argument, before the model is serialised and without touching the files."""

from __future__ import annotations

import pytest
import torch

from metricface.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def setup(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=1, step=2)
    return tmp_path, model, opt, path


def test_save_to_a_directory_is_refused_before_writing(setup):
    tmp_path, model, _, _ = setup
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with pytest.raises(ValueError, match=r"path must be a file, got the directory .*"):
        save_checkpoint(tmp_path, model=model, epoch=1, step=2)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


@pytest.mark.parametrize("name", ["optimizer", "scheduler", "scaler"])
def test_save_names_a_state_holder_without_state_dict(setup, name):
    _, model, opt, path = setup
    kwargs = {name: [opt]}  # e.g. a list of two optimizers
    with pytest.raises(TypeError, match=rf"{name} must have a state_dict\(\) method, got list"):
        save_checkpoint(path, model=model, epoch=1, step=2, **kwargs)


@pytest.mark.parametrize("name", ["model", "optimizer", "scheduler", "scaler"])
def test_load_names_a_target_that_cannot_load_state(setup, name):
    _, model, opt, path = setup
    kwargs = {name: model.state_dict() if name == "model" else [opt]}
    with pytest.raises(TypeError, match=rf"{name} must .*got (OrderedDict|list)"):
        load_checkpoint(path, **kwargs)
