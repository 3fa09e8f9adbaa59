"""Bad input to every margin-softmax entry point: a clear error, raised before any compute.

The compute kernels are replaced by functions that fail the test if reached, so each case
proves the order (validate, then compute), not only the message.
"""

from __future__ import annotations

import pytest
import torch

from metricface.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CosFaceMargin,
    PartialFCLoss,
    SubCenterArcFaceLoss,
    chunked,
    chunked_margin_cross_entropy,
    margin,
)

C, D = 10, 4


def _unreachable(*args, **kwargs):
    raise AssertionError("compute started before the input was validated")


@pytest.fixture
def no_compute(monkeypatch):
    monkeypatch.setattr(chunked._MarginSoftmax, "apply", _unreachable)  # the one kernel
    monkeypatch.setattr(margin, "all_gather_with_grad", _unreachable)


def _chunked(embeddings, labels):
    weight = torch.randn(C, D)
    return chunked_margin_cross_entropy(embeddings, weight, labels, CosFaceMargin(0.3), 30.0, 3)


ENTRY_POINTS = {
    "arcface": lambda: ArcFaceLoss(C, D),
    "subcenter": lambda: SubCenterArcFaceLoss(C, D, sub_centers=2),
    "adaface": lambda: AdaFaceLoss(C, D),
    "chunked": lambda: _chunked,
    "partial_fc": lambda: PartialFCLoss(C, D),
    "partial_fc-sampled": lambda: PartialFCLoss(C, D, sample_rate=0.5, chunk_size=3),
}
LONG = torch.long
CASES = {
    "label-too-large": (torch.randn(3, D), torch.tensor([0, C, 1]), ValueError,
                        rf"labels must be in \[0, num_classes={C}\), got a label {C}"),
    "label-negative": (torch.randn(3, D), torch.tensor([0, -1, 1]), ValueError,
                       rf"labels must be in \[0, num_classes={C}\), got a label -1"),
    "float-labels": (torch.randn(3, D), torch.zeros(3), TypeError,
                     "labels must have an integer dtype, got torch.float32"),
    "integer-embeddings": (torch.zeros(3, D, dtype=LONG), torch.zeros(3, dtype=LONG), TypeError,
                           "embeddings must have a floating-point dtype, got torch.int64"),
    "fewer-labels": (torch.randn(3, D), torch.zeros(2, dtype=LONG), ValueError,
                     "labels must have one entry per embedding"),
    "labels-2d": (torch.randn(3, D), torch.zeros(3, 1, dtype=LONG), ValueError,
                  r"labels must have shape \(batch,\)"),
    "wrong-dim": (torch.randn(3, D + 1), torch.zeros(3, dtype=LONG), ValueError,
                  rf"(embedding_dim={D}|shape \(batch, {D}\)|\(num_classes, {D + 1}\))"),
    "embeddings-1d": (torch.randn(D), torch.zeros(1, dtype=LONG), ValueError,
                      r"embeddings must have shape \(batch, dim\)"),
    "empty-batch": (torch.zeros(0, D), torch.zeros(0, dtype=LONG), ValueError,
                    r"embeddings must be non-empty, got shape \(0, 4\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_input_is_a_clear_error_before_compute(no_compute, entry, case):
    torch.manual_seed(0)
    loss_fn = ENTRY_POINTS[entry]()
    embeddings, labels, exc, match = CASES[case]
    with pytest.raises(exc, match=match):
        loss_fn(embeddings, labels)
    if isinstance(loss_fn, AdaFaceLoss):  # the running statistics did not see the batch
        assert loss_fn.running_mean.item() == 20.0 and loss_fn.running_std.item() == 100.0


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_the_guard_lets_valid_input_through_to_compute(no_compute, entry):
    # the same fixture on a valid batch reaches the (replaced) kernel: the cases above fail
    # in validation, not in some other step before it
    loss_fn = ENTRY_POINTS[entry]()
    with pytest.raises(AssertionError, match="compute started"):
        loss_fn(torch.randn(3, D), torch.tensor([0, 1, 2]))
