"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification and clustering."""

from metricface.metrics.identification import (
    OpenSetResult,
    cmc_curve,
    cmc_curve_from_scores,
    open_set_identification,
    open_set_identification_from_scores,
    top_k_accuracy,
)

__all__: list[str] = [
    "OpenSetResult",
    "cmc_curve",
    "cmc_curve_from_scores",
    "open_set_identification",
    "open_set_identification_from_scores",
    "top_k_accuracy",
]
