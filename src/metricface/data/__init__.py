"""Datasets: identity folders, pair lists, built-in synthetic faces and transform presets."""

__all__: list[str] = []
