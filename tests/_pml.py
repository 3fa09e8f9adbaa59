"""Helpers shared by the tests that compare with pytorch-metric-learning.

Importing this module skips the importing test module when pytorch-metric-learning is missing.
"""

from __future__ import annotations

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")


def batch_factory(n: int, dim: int, classes: int, dtype: torch.dtype = torch.float32):
    """A ``batch(n, dim, classes, seed=0, dtype)`` function with these defaults.

    ``batch`` returns ``n`` standard-normal embeddings of shape ``(n, dim)`` and labels in
    ``[0, classes)``, both drawn from a generator seeded with ``seed``.
    """

    def batch(n=n, dim=dim, classes=classes, seed=0, dtype=dtype):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, dim, generator=g, dtype=dtype)
        return x, torch.randint(0, classes, (n,), generator=g)

    return batch


def value_and_grad(fn, x, *args, **kwargs):
    """``fn(x, *args, **kwargs)`` (detached) and its gradient with respect to ``x``."""
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


def peer_distance(distance: str):
    """The pytorch-metric-learning distance object matching our ``distance`` name."""
    if distance == "cosine":
        return pml_distances.CosineSimilarity()
    return pml_distances.LpDistance()


def assert_matches_peer(ours, peer, x, *args, tight: bool = False, **kwargs):
    """Check that two losses agree in value and gradient on ``x``; return our loss value.

    ``tight`` uses float64-level tolerances (``rtol=1e-10`` on the loss, ``1e-8`` on the
    gradient, ``atol=1e-12``) instead of :func:`torch.testing.assert_close`'s defaults.
    """
    lo, go = value_and_grad(ours, x, *args, **kwargs)
    lp, gp = value_and_grad(peer, x, *args, **kwargs)
    torch.testing.assert_close(lo, lp, **({"rtol": 1e-10, "atol": 1e-12} if tight else {}))
    torch.testing.assert_close(go, gp, **({"rtol": 1e-8, "atol": 1e-12} if tight else {}))
    return lo
