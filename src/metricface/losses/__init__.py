"""Losses: margin softmax over class centers, sharded class-center training, contrastive and
triplet losses."""

from metricface.losses import functional
from metricface.losses.functional import (
    AdaFaceMargin,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    Margin,
    NoMargin,
    SphereFaceMargin,
    apply_margin,
    margin_cross_entropy,
    subcenter_max,
)
from metricface.losses.margin import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    MarginSoftmaxLoss,
    NormSoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)

__all__: list[str] = []
__all__ += ["functional"]
__all__ += ["AdaFaceMargin"]
__all__ += ["ArcFaceMargin"]
__all__ += ["CombinedMargin"]
__all__ += ["CosFaceMargin"]
__all__ += ["Margin"]
__all__ += ["NoMargin"]
__all__ += ["SphereFaceMargin"]
__all__ += ["apply_margin"]
__all__ += ["margin_cross_entropy"]
__all__ += ["subcenter_max"]
__all__ += ["AdaFaceLoss"]
__all__ += ["ArcFaceLoss"]
__all__ += ["CombinedMarginLoss"]
__all__ += ["CosFaceLoss"]
__all__ += ["MarginSoftmaxLoss"]
__all__ += ["NormSoftmaxLoss"]
__all__ += ["SphereFaceLoss"]
__all__ += ["SubCenterArcFaceLoss"]
