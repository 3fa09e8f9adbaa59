"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification and clustering."""

from metricface.metrics.clustering import (
    KMeansResult,
    KMeansScores,
    cluster_accuracy,
    kmeans,
    kmeans_cluster_accuracy,
    normalized_mutual_info,
)
from metricface.metrics.identification import (
    OpenSetResult,
    cmc_curve,
    cmc_curve_from_scores,
    open_set_identification,
    open_set_identification_from_scores,
    top_k_accuracy,
)

__all__: list[str] = [
    "KMeansResult",
    "KMeansScores",
    "OpenSetResult",
    "cluster_accuracy",
    "cmc_curve",
    "cmc_curve_from_scores",
    "kmeans",
    "kmeans_cluster_accuracy",
    "normalized_mutual_info",
    "open_set_identification",
    "open_set_identification_from_scores",
    "top_k_accuracy",
]
