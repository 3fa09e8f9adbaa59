"""load_backbone reads a network's weights out of any checkpoint safely; loading weights for
inference leaves the caller's random generators alone."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from metricface.backbones import iresnet18
from metricface.checkpoint import load_backbone, load_checkpoint, save_checkpoint


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return iresnet18(embedding_dim=16, width=0.125, input_size=32)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Objective(nn.Module):
    """An example trainer's layout: the backbone beside a loss with class centers."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = nn.Linear(16, 5, bias=False)


def test_loads_the_backbone_beside_a_loss_and_returns_the_rest(tmp_path):
    trained = _Objective(_net(0))
    config = {"backbone": "iresnet18", "image_size": 32}
    save_checkpoint(tmp_path / "c.pt", model=trained, epoch=3, step=30, extra={"config": config})
    model = _net(1)
    assert not _same_weights(model, trained.backbone)
    info = load_backbone(tmp_path / "c.pt", model)
    assert _same_weights(model, trained.backbone)
    assert (info["epoch"], info["step"], info["prefix"]) == (3, 30, "backbone.")
    assert info["extra"]["config"] == config
    # the plain loader says where to look instead of listing a hundred missing keys
    with pytest.raises(ValueError, match=r"under 'backbone\.'.*load_backbone"):
        load_checkpoint(tmp_path / "c.pt", model=_net(2))


def test_compiled_and_ddp_prefixes_are_removed_on_both_sides(tmp_path):
    trained = _net(0)
    # a checkpoint of a submodule compiled by assignment and of a DataParallel-wrapped one
    stored = {f"backbone._orig_mod.{k}": v for k, v in trained.state_dict().items()}
    torch.save(stored, tmp_path / "compiled.pt")
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("compiled.pt", "ddp.pt"):
        model = _net(1)
        info = load_backbone(tmp_path / name, model)
        assert _same_weights(model, trained), name
        assert info == {"prefix": "backbone." if name == "compiled.pt" else ""}
    # into a model holding a compiled submodule (its keys are backbone._orig_mod.*)
    holder = nn.Module()
    holder.backbone = nn.Module()  # torch.compile's wrapper layout, without compiling
    holder.backbone.add_module("_orig_mod", _net(1))
    assert load_backbone(tmp_path / "compiled.pt", holder)["prefix"] == ""
    assert _same_weights(holder.backbone._orig_mod, trained)


def test_random_generators_are_left_alone_unless_resuming(tmp_path):
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=1, step=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    load_backbone(tmp_path / "c.pt", _net(1))
    torch.manual_seed(123)  # _net reseeds: compare what loading alone does
    target = _net(1)
    torch.manual_seed(123)
    load_backbone(tmp_path / "c.pt", target)
    assert torch.equal(torch.get_rng_state(), state)
    load_checkpoint(tmp_path / "c.pt", model=target)  # weights only: inference
    assert torch.equal(torch.get_rng_state(), state)
    saved = load_checkpoint(tmp_path / "c.pt", model=target, optimizer=opt)  # resuming
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    torch.manual_seed(123)
    load_checkpoint(tmp_path / "c.pt", model=target, restore_rng=True)
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])


class _WritesAFile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickled_code_and_weights_that_do_not_fit(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": _WritesAFile(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        load_backbone(tmp_path / "evil.pt", _net(0))
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.pt", _net(0))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load_backbone(tmp_path / "missing.pt", {"a": 1})
    save_checkpoint(tmp_path / "c.pt", model=_Objective(_net(0)), epoch=1, step=1)
    wider = iresnet18(embedding_dim=16, width=0.25, input_size=32)
    with pytest.raises(ValueError, match=r"other shapes .* stored, .* in the model"):
        load_backbone(tmp_path / "c.pt", wider)
    with pytest.raises(ValueError, match=r"under prefix='head\.'.*groups are \['backbone\.'"):
        load_backbone(tmp_path / "c.pt", _net(1), prefix="head.")
    with pytest.raises(ValueError, match="2 of its 2 weights are missing"):
        load_backbone(tmp_path / "c.pt", nn.ModuleDict({"head": nn.Linear(3, 2)}))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="neither a metricface checkpoint nor a state dict"):
        load_backbone(tmp_path / "list.pt", _net(0))
