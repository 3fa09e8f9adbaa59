"""Build backbones by name, and register your own so configs and trainers can name them."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from metricface.backbones import iresnet, resnet

__all__ = ["available_backbones", "build_backbone", "register_backbone"]

BackboneFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneFactory] = {
    name: getattr(module, name)
    for module in (resnet, iresnet)
    for name in module.__all__
    if name[0].islower()
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`, sorted.

    Returns
    -------
    list of str
        E.g. ``['iresnet100', 'iresnet18', ..., 'resnet50']`` plus any registered names.
    """
    return sorted(_REGISTRY)


def register_backbone(
    name: str, factory: BackboneFactory | None = None, *, overwrite: bool = False
) -> Any:
    """Make ``factory`` available to :func:`build_backbone` under ``name``.

    Usable directly, ``register_backbone("mynet", build_mynet)``, or as a decorator,
    ``@register_backbone("mynet")``.

    Parameters
    ----------
    name : str
        Registry key.
    factory : callable, optional
        Called as ``factory(**kwargs)``; must return an ``nn.Module``.
    overwrite : bool
        Allow replacing an existing name (default: a ``ValueError``).

    Returns
    -------
    callable
        ``factory`` (or the decorator when ``factory`` is omitted).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")

    def add(fn: BackboneFactory) -> BackboneFactory:
        if not callable(fn):
            raise TypeError(f"factory must be callable, got {type(fn).__name__}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(
                f"a backbone named {name!r} is already registered; "
                "pass overwrite=True to replace it"
            )
        _REGISTRY[name] = fn
        return fn

    return add if factory is None else add(factory)


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword options ``kwargs``.

    Parameters
    ----------
    name : str
        One of :func:`available_backbones` (case-insensitive).
    **kwargs
        Passed to the builder, e.g. ``embedding_dim=512, small_input=True``.

    Returns
    -------
    nn.Module
        The network.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.

    Examples
    --------
    >>> net = metricface.backbones.build_backbone("iresnet18", embedding_dim=64, width=0.25)
    >>> net.eval()(torch.randn(1, 3, 112, 112)).shape
    torch.Size([1, 64])
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name if name in _REGISTRY else name.lower()
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}; available backbones: {', '.join(available_backbones())}"
        )
    return _REGISTRY[key](**kwargs)
