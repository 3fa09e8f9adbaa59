"""Checkpoints of the class-center losses saved before the pipeline was unified still load.

``tests/data/class_center_state_dicts_f0290da.pt`` was written by the code of commit f0290da (the last one with the
separate fused, chunked and sharded kernels): ``state_dict()`` of ArcFaceLoss, CosFaceLoss,
SubCenterArcFaceLoss (3 sub-centers), AdaFaceLoss (after one training step, so its running
statistics moved) and PartialFCLoss on 7 classes of dimension 4, each with its loss on a fixed
batch ``x, y`` stored alongside, and the two shards of a PartialFCLoss on 2 ranks with the
global loss. Each loads with ``strict=True`` (same keys and shapes) and gives the same loss.
The sharded state dicts are loaded shard by shard on 2 ranks in
``test_class_center_combinations.py`` (one spawn for all sharded checks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metricface.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CosFaceLoss,
    PartialFCLoss,
    SubCenterArcFaceLoss,
)

SAVED = Path(__file__).parents[1] / "data" / "class_center_state_dicts_f0290da.pt"
C, D = 7, 4
MODULES = {
    "arcface": lambda: ArcFaceLoss(C, D),
    "cosface": lambda: CosFaceLoss(C, D),
    "subcenter": lambda: SubCenterArcFaceLoss(C, D, sub_centers=3),
    "adaface": lambda: AdaFaceLoss(C, D, momentum=0.5),
    "partial_fc": lambda: PartialFCLoss(C, D),
}


def saved() -> dict:
    return torch.load(SAVED, weights_only=True)


@pytest.mark.parametrize("name", list(MODULES))
def test_saved_state_dict_loads_and_gives_the_saved_loss(name):
    data = saved()
    loss_fn = MODULES[name]()
    loss_fn.load_state_dict(data[name]["state"], strict=True)
    assert loss_fn.state_dict().keys() == data[name]["state"].keys()
    loss = loss_fn.eval()(data["x"], data["y"])
    torch.testing.assert_close(loss, data[name]["loss"], rtol=1e-6, atol=0)


def test_saved_shards_concatenate_to_the_single_process_weight():
    data = saved()["partial_fc_sharded"]
    full = torch.cat([state["weight"] for state in data["states"]])
    loss_fn = PartialFCLoss(C, D)
    loss_fn.load_full_weight(full)
    torch.testing.assert_close(loss_fn(saved()["x"], saved()["y"]), data["loss"], rtol=1e-6, atol=0)
