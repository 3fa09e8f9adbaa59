"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification and clustering."""

from metricface.metrics._checks import check_binary_scores
from metricface.metrics.clustering import (
    KMeansResult,
    KMeansScores,
    cluster_accuracy,
    kmeans,
    kmeans_cluster_accuracy,
    normalized_mutual_info,
)
from metricface.metrics.histogram import ScoreHistogram, all_pairs_histogram
from metricface.metrics.identification import (
    OpenSetResult,
    cmc_curve,
    cmc_curve_from_scores,
    open_set_identification,
    open_set_identification_from_scores,
    top_k_accuracy,
)
from metricface.metrics.report import (
    VerificationReport,
    all_pair_scores,
    verification_report,
    verification_report_from_embeddings,
)
from metricface.metrics.verification import (
    det_curve,
    equal_error_rate,
    kfold_verification_accuracy,
    roc_auc,
    roc_curve,
    tar_at_far,
)

__all__ = [
    "KMeansResult",
    "KMeansScores",
    "OpenSetResult",
    "ScoreHistogram",
    "VerificationReport",
    "all_pair_scores",
    "all_pairs_histogram",
    "check_binary_scores",
    "cluster_accuracy",
    "cmc_curve",
    "cmc_curve_from_scores",
    "det_curve",
    "equal_error_rate",
    "kfold_verification_accuracy",
    "kmeans",
    "kmeans_cluster_accuracy",
    "normalized_mutual_info",
    "open_set_identification",
    "open_set_identification_from_scores",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "top_k_accuracy",
    "verification_report",
    "verification_report_from_embeddings",
]
