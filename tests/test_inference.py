"""Batched inference: order, labels, flip TTA, eval-mode handling, autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from metricface.inference import embed


class TinyNet(nn.Module):
    """Conv + BN + dropout: eval mode changes its output, and it is not flip-invariant."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, dim)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(23, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 5, (23,), generator=gen)
    return images, labels


def model_with_stats():
    torch.manual_seed(0)
    model = TinyNet()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    return model


def reference(model, images, flip=False, normalize=True):
    model.eval()
    with torch.no_grad():
        out = model(images).double()
        if flip:
            out = out + model(images.flip(-1)).double()
    return F.normalize(out, dim=1) if normalize else out


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_matches_manual_computation_in_order(data, flip, normalize):
    images, labels = data
    model = model_with_stats()
    loader = DataLoader(TensorDataset(images, labels), batch_size=5, shuffle=False)
    emb, got_labels = embed(model, loader, flip_tta=flip, normalize=normalize)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (23, 6)
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(
        emb.double(), reference(model, images, flip, normalize), atol=1e-5, rtol=1e-5
    )


def test_flip_changes_the_embedding(data):
    # guards the TTA test above against a model that is flip-invariant by accident
    images, _ = data
    model = model_with_stats()
    plain, _ = embed(model, [images])
    flipped, _ = embed(model, [images], flip_tta=True)
    assert not torch.allclose(plain, flipped, atol=1e-3)


def test_train_and_eval_modes_restored(data):
    images, _ = data
    model = model_with_stats()
    model.train()
    model.bn.eval()  # a frozen BN inside a training model must stay frozen
    emb, labels = embed(model, [images[:10], images[10:]])
    assert labels is None
    assert model.training and model.conv.training and model.drop.training
    assert not model.bn.training
    torch.testing.assert_close(
        emb.double(), reference(model_with_stats(), images), atol=1e-5, rtol=1e-5
    )
    # restored even when the pass fails
    model.train()
    with pytest.raises(TypeError, match="batch 0 must be"):
        embed(model, ["not a batch"])
    assert all(m.training for m in model.modules())


def test_dict_batches_and_tensor_batches(data):
    images, labels = data
    model = model_with_stats()
    batches = [
        {"image": images[:12], "label": labels[:12]},
        {"image": images[12:], "label": labels[12:].tolist()},
    ]
    emb, got = embed(model, batches)
    assert torch.equal(got, labels)
    emb2, none = embed(model, [images[:7], images[7:]])
    assert none is None
    torch.testing.assert_close(emb, emb2)


def test_inference_mode_and_no_grad_leak(data):
    images, _ = data
    model = model_with_stats()
    emb, _ = embed(model, [images])
    assert not emb.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu_runs_and_stays_close(data, amp_dtype):
    images, _ = data
    model = model_with_stats()
    emb, _ = embed(model, [images], amp_dtype=amp_dtype)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.double(), reference(model, images), atol=5e-2, rtol=0)


def test_device(data, device):
    images, labels = data
    model = model_with_stats().to(device)
    emb, _ = embed(model, [(images, labels)])
    assert emb.device.type == "cpu"
    torch.testing.assert_close(
        emb.double(), reference(model_with_stats(), images), atol=1e-4, rtol=0
    )


def test_progress_bar(data, capsys):
    pytest.importorskip("tqdm")
    images, _ = data
    emb, _ = embed(model_with_stats(), [images[:10], images[10:]], progress=True)
    assert emb.shape == (23, 6)
    assert "embedding" in capsys.readouterr().err


def test_non_finite_output_is_reported():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))

    with pytest.raises(ValueError, match="non-finite embeddings for batch 0"):
        embed(Bad(), [torch.zeros(2, 3, 4, 4)])


@pytest.mark.parametrize(
    ("model", "loader", "kwargs", "error", "match"),
    [
        ("m", [torch.zeros(1, 3, 8, 8)], {}, TypeError, "model must be a torch.nn.Module"),
        (None, [], {}, ValueError, "at least one batch"),
        (
            None,
            [torch.zeros(1, 3, 8, 8)],
            {"amp_dtype": torch.float64},
            TypeError,
            "amp_dtype must be",
        ),
        (None, [{"pixels": torch.zeros(1, 3, 8, 8)}], {}, ValueError, "expected one of the keys"),
        (None, [(torch.zeros(2, 3, 8, 8), torch.zeros(2))], {}, ValueError, "must be 2 integers"),
        (None, [(torch.zeros(2, 3, 8, 8), ("ann", "bob"))], {}, ValueError, "does not convert"),
        (
            None,
            [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), torch.zeros(1, 3, 8, 8)],
            {},
            ValueError,
            "lacks labels",
        ),
        (
            None,
            [torch.zeros(1, 3, 8, 8), (torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))],
            {},
            ValueError,
            "has labels",
        ),
    ],
)
def test_validation(model, loader, kwargs, error, match):
    model = model_with_stats() if model is None else model
    with pytest.raises(error, match=match):
        embed(model, loader, **kwargs)


def test_model_output_shape_is_checked():
    with pytest.raises(TypeError, match=r"model must return a tensor of shape \(batch, dim\)"):
        embed(nn.Identity(), [torch.zeros(2, 3, 4, 4)])


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_flip_tta_under_autocast_is_the_normalised_sum_of_both_low_precision_embeddings(
    data, amp_dtype
):
    images, _ = data
    model = model_with_stats()
    seen = []
    model.fc.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    emb, _ = embed(model, [images[:10], images[10:]], amp_dtype=amp_dtype, flip_tta=True)
    assert seen == [amp_dtype] * 4  # two batches, each image and its mirror, under autocast
    # the same computation written out: both embeddings in low precision, summed in float32
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=amp_dtype):
        both = model(images).float() + model(images.flip(-1)).float()
    expected = F.normalize(both.double(), dim=1)
    torch.testing.assert_close(emb.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(emb.double().norm(dim=1), torch.ones(23, dtype=torch.float64))
    # and it is not the float32 computation: autocast really changed the arithmetic
    assert (emb.double() - reference(model, images, flip=True)).abs().max() > 1e-5
