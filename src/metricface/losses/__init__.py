"""Losses: margin softmax over class centers, sharded class-center training, contrastive and triplet losses."""

__all__: list[str] = []
