"""Evaluation metrics: verification (ROC, DET, EER, TAR@FAR), identification and clustering."""

__all__: list[str] = []
