"""Samplers choose which images go into a batch: P identities x K images, pairs; correct under DDP."""

__all__: list[str] = []
