"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification and clustering."""

from metricface.metrics.histogram import ScoreHistogram, all_pairs_histogram
from metricface.metrics.report import VerificationReport, verification_report
from metricface.metrics.verification import (
    det_curve,
    equal_error_rate,
    kfold_verification_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)

__all__: list[str] = [
    "ScoreHistogram",
    "VerificationReport",
    "all_pairs_histogram",
    "det_curve",
    "equal_error_rate",
    "kfold_verification_accuracy",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "verification_report",
]
