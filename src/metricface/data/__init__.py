"""Datasets: identity folders, pair lists, built-in synthetic faces and transform presets."""

from metricface.data.synthetic import DISTORTIONS, SyntheticFaces

__all__: list[str] = ["DISTORTIONS", "SyntheticFaces"]
