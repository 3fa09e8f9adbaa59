"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification, clustering and
the IJB-B/C template protocols."""

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
from metricface.metrics.templates import (
    IJB_FAR_TARGETS,
    IJBReport,
    TemplateIdentification,
    ijb_report,
    template_features,
    template_identification,
    template_pair_scores,
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
    "IJB_FAR_TARGETS",
    "IJBReport",
    "KMeansResult",
    "KMeansScores",
    "OpenSetResult",
    "ScoreHistogram",
    "TemplateIdentification",
    "VerificationReport",
    "all_pair_scores",
    "all_pairs_histogram",
    "check_binary_scores",
    "cluster_accuracy",
    "cmc_curve",
    "cmc_curve_from_scores",
    "det_curve",
    "equal_error_rate",
    "ijb_report",
    "kfold_verification_accuracy",
    "kmeans",
    "kmeans_cluster_accuracy",
    "normalized_mutual_info",
    "open_set_identification",
    "open_set_identification_from_scores",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "template_features",
    "template_identification",
    "template_pair_scores",
    "top_k_accuracy",
    "verification_report",
    "verification_report_from_embeddings",
]
