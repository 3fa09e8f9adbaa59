"""Embedding heads: turn any feature extractor into a network that outputs embeddings.

Whether embeddings come out L2-normalised is an explicit ``normalize=`` option everywhere in
metricface, and it defaults to ``False``: the margin losses (ArcFace, CosFace, ...) normalise
internally, AdaFace reads the raw norm as an image-quality signal, and InsightFace's IResNet
outputs raw embeddings too. Normalise at inference (``normalize(model(x))``) or build the
model with ``normalize=True`` when a downstream consumer expects unit vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metricface._validation import check_scalar
from metricface.numerics import l2_normalize

__all__ = ["EmbeddingHead", "EmbeddingModel", "L2Norm", "normalize"]


def normalize(x: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Scale ``x`` to unit L2 norm along ``dim``.

    The norm is computed in float32 (or float64 for float64 input) and the result cast back,
    so half-precision embeddings normalise without overflow; a zero vector stays zero.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point tensor, typically embeddings of shape ``(B, D)``.
    dim : int
        Dimension to normalise along.
    eps : float
        Lower bound on the norm, avoiding division by zero.

    Returns
    -------
    torch.Tensor
        Tensor of the same shape and dtype as ``x``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point torch.Tensor, got {got}")
    return l2_normalize(x, dim=dim, eps=eps).to(x.dtype)


class L2Norm(nn.Module):
    """Module form of :func:`normalize`: ``(B, D) -> (B, D)`` unit-norm rows.

    Parameters
    ----------
    dim : int
        Dimension to normalise along, default 1.
    eps : float
        Lower bound on the norm.
    """

    def __init__(self, dim: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        check_scalar(eps, "eps", low=0.0, low_inclusive=False)
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.dim, self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class EmbeddingHead(nn.Module):
    """Dropout, linear projection and batch norm from pooled features to an embedding.

    ``bn(fc(dropout(x)))``, optionally followed by L2 normalisation. 4-D feature maps are
    global-average-pooled first, so the head accepts either ``(B, C)`` or ``(B, C, H, W)``.

    **Shape:** ``(B, in_features)`` or ``(B, in_features, H, W)`` -> ``(B, embedding_dim)``.

    Parameters
    ----------
    in_features : int
        Feature dimension ``C`` of the backbone.
    embedding_dim : int
        Output dimension ``D``.
    dropout : float
        Dropout probability before the projection, in ``[0, 1)``; default 0.
    batch_norm : bool
        Follow the projection by ``BatchNorm1d(D)`` (default), which centres the embedding
        distribution and makes the projection bias redundant (it is then dropped).
    normalize : bool
        L2-normalise the output (default ``False``: see the module docstring).
    """

    def __init__(
        self,
        in_features: int,
        embedding_dim: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = True,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        check_scalar(in_features, "in_features", low=1, integer=True)
        check_scalar(embedding_dim, "embedding_dim", low=1, integer=True)
        check_scalar(dropout, "dropout", low=0.0, high=1.0, high_inclusive=False)
        self.in_features = in_features
        self.embedding_dim = embedding_dim
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_features, embedding_dim, bias=not batch_norm)
        self.bn = nn.BatchNorm1d(embedding_dim) if batch_norm else None
        self.l2 = L2Norm() if normalize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.dropout(_pooled_features(x, self.in_features)))
        if self.bn is not None:
            x = self.bn(x)
        if self.l2 is not None:
            x = self.l2(x)
        return x


@torch.fx.wrap
def _pooled_features(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """``(B, C)`` or ``(B, C, H, W)`` features as ``(B, C)``: pool maps, check ``C``.

    Wrapped for ``torch.fx``, so symbolic tracing (e.g. torchvision's
    ``create_feature_extractor``) records one call instead of branching on symbolic shapes.
    """
    if x.ndim == 4:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(
            f"EmbeddingHead expects features of shape (B, {in_features}) or "
            f"(B, {in_features}, H, W), got {tuple(x.shape)}"
        )
    return x


class EmbeddingModel(nn.Module):
    """Wrap any feature extractor (a torchvision or timm model, your own network) as an embedder.

    The backbone must map images to features of shape ``(B, feature_dim)`` or
    ``(B, feature_dim, H, W)``; remove its classifier first, e.g. ``tv.fc = nn.Identity()`` for
    a torchvision ResNet or ``timm.create_model(name, num_classes=0)`` for timm.

    **Shape:** ``(B, 3, H, W) -> (B, embedding_dim)``.

    Parameters
    ----------
    backbone : nn.Module
        The feature extractor, stored as ``self.backbone``.
    feature_dim : int
        Channels / features the backbone outputs.
    embedding_dim : int
        Embedding size ``D``.
    normalize : bool
        L2-normalise the embeddings (default ``False``, as for every metricface model).
    dropout : float
        Dropout before the projection (see :class:`EmbeddingHead`).

    Examples
    --------
    >>> import torchvision
    >>> tv = torchvision.models.resnet18()
    >>> tv.fc = torch.nn.Identity()
    >>> model = metricface.backbones.EmbeddingModel(tv, 512, 128, normalize=True).eval()
    >>> model(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 128])
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        embedding_dim: int,
        *,
        normalize: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        self.head = EmbeddingHead(feature_dim, embedding_dim, dropout=dropout, normalize=normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
