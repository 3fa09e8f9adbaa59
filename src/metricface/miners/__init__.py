"""Miners choose which pairs and triplets of a batch a loss trains on (pytorch-metric-learning index tuples)."""

__all__: list[str] = []
