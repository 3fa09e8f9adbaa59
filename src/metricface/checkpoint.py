"""Training checkpoints that are safe to load and let a run resume exactly.

:func:`save_checkpoint` writes the model, optimizer, LR scheduler and gradient-scaler states,
the epoch and step counters and the random-number-generator states of torch (CPU and every
CUDA device), NumPy and Python's :mod:`random`. Restoring all of them with
:func:`load_checkpoint` makes a resumed run draw the same shuffles, augmentations and dropout
masks as an uninterrupted one, so it ends with bitwise-identical weights (on the same hardware
and software, with deterministic kernels).

:func:`load_backbone` reads only the weights of a network out of a checkpoint, for inference or
fine-tuning: out of an example trainer's checkpoint (where the backbone sits beside a loss under
``backbone.``), a checkpoint of a compiled or DDP-wrapped model, or a bare state dict.

Two properties matter in practice:

Atomic
    The file is written to a temporary file in the same directory, flushed to disk
    (``fsync``) and moved over the target with :func:`os.replace`. A run killed while saving
    leaves the previous checkpoint intact, never a truncated one.
Safe to load
    Only tensors and plain Python values (dict, list, tuple, str, int, float, bool, None) are
    stored, so checkpoints load with ``torch.load(..., weights_only=True)``, which refuses
    pickled code. :func:`save_checkpoint` checks this before writing and names any value that
    would not load; the RNG states of NumPy and Python are converted to tensors and lists.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metricface._validation import check_scalar

__all__ = [
    "get_rng_state",
    "load_backbone",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "unwrap_model",
]

_FORMAT = "metricface.checkpoint"
_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))
_TORCH_VALUES = (torch.Size, torch.dtype, torch.device)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying module of a ``DistributedDataParallel``/``DataParallel`` or compiled model.

    State-dict keys then carry no ``module.`` or ``_orig_mod.`` prefix, so a checkpoint loads
    into a plain model whatever wrapped it during training.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def get_rng_state() -> dict[str, Any]:
    """Random states of torch (CPU and CUDA), NumPy's global generator and :mod:`random`.

    Returns
    -------
    dict
        Only tensors and plain values, so it can be stored in a ``weights_only`` checkpoint.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # resumed on a different number of GPUs: restore those that exist
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would create: ``0o666`` minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _check_loadable(value: Any, where: str) -> None:
    """Raise a TypeError naming the first value that ``weights_only`` loading would refuse.

    Types are matched exactly: a subclass of an allowed type (``numpy.float64``, a namedtuple,
    ``defaultdict``, an ``IntEnum``) is pickled as its own class and refused on load.
    """
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PLAIN or kind in _TORCH_VALUES:
        return
    if kind in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int, float, bool):
                raise TypeError(
                    f"{where} has a key of type {type(k).__name__}; checkpoint keys must be "
                    "str, int, float or bool"
                )
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if kind in (list, tuple):
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which "
        "torch.load(weights_only=True) refuses; store only tensors, numbers, strings, "
        "None and dicts/lists/tuples of them (convert e.g. numpy scalars with float() or int())"
    )


def _check_state_holders(method: str, **objects: Any) -> None:
    """Raise a TypeError naming the first given object that lacks ``method`` (e.g. a list)."""
    for name, obj in objects.items():
        if obj is not None and not callable(getattr(obj, method, None)):
            raise TypeError(
                f"{name} must have a {method}() method, got {type(obj).__name__}; store "
                f"further state in extra (e.g. extra={{'optimizer2': opt2.state_dict()}})"
            )


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    epoch: int,
    step: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its directory must exist. An existing file is replaced only once the new
        one is completely on disk.
    model : torch.nn.Module
        The model; DDP/DataParallel/``torch.compile`` wrappers are removed (:func:`unwrap_model`).
    optimizer, scheduler, scaler : optional
        Objects with ``state_dict()``: a :class:`torch.optim.Optimizer`, an LR scheduler,
        a :class:`torch.amp.GradScaler`. A loss with learnable class centers belongs in
        ``extra`` (as ``extra={"loss": loss.state_dict()}``) or inside ``model``.
    epoch : int
        Number of completed epochs.
    step : int
        Number of completed optimizer steps.
    extra : mapping, optional
        Further values to store (config, metrics, other state dicts): tensors and plain values.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    TypeError
        If a stored value would be refused by ``torch.load(weights_only=True)``, or ``model``
        is not a module or ``optimizer``/``scheduler``/``scaler`` has no ``state_dict()``;
        nothing is written then.
    ValueError
        If ``path`` is a directory or its directory does not exist, or ``epoch``/``step`` is
        negative.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_state_holders("state_dict", optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    check_scalar(epoch, "epoch", low=0, integer=True)
    check_scalar(step, "step", low=0, integer=True)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path must be a file, got the directory {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path's directory must exist, got {str(path)!r}")
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
        "extra": dict(extra) if extra is not None else {},
    }
    _check_loadable(payload, "checkpoint")

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would otherwise survive the rename
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    map_location: str | torch.device | None = "cpu",
    restore_rng: bool | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and restore the given objects.

    The file is read with ``torch.load(..., weights_only=True)``: a file that holds anything
    but tensors and plain values (e.g. a pickled callable) is refused.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    model, optimizer, scheduler, scaler : optional
        Objects whose state is restored in place (wrappers are removed from ``model``).
    map_location : str or torch.device, optional
        Where tensors are loaded (default CPU; ``load_state_dict`` moves them to the model's
        and optimizer's devices).
    restore_rng : bool, optional
        Restore the torch/CUDA/NumPy/Python random states, so that training continues exactly.
        By default they are restored when an ``optimizer`` is given (resuming training) and
        left alone otherwise (loading weights, e.g. for inference, does not reset the caller's
        random streams).
    strict : bool
        Passed to ``model.load_state_dict``.

    Returns
    -------
    dict
        The whole checkpoint: ``"epoch"``, ``"step"``, ``"extra"``, ``"model"`` (state dict),
        ``"optimizer"``, ``"scheduler"``, ``"scaler"``, ``"rng"``.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``optimizer``/``scheduler``/``scaler`` has no
        ``load_state_dict()``.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated or corrupt, is not a metricface checkpoint, or holds objects
        that are not safe to load; the message names the file. Also if ``model``'s weights sit
        under a prefix in the checkpoint (``backbone.`` in the example trainers'): the message
        points to :func:`load_backbone`.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_state_holders("load_state_dict", optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a metricface checkpoint (expected a dict with "
            f"format={_FORMAT!r}); for a bare state dict use "
            "model.load_state_dict(torch.load(path, weights_only=True)), or "
            "load_backbone(path, model)"
        )
    if ckpt.get("version", 0) > _VERSION:
        raise ValueError(
            f"{str(path)!r} has checkpoint format version {ckpt['version']}, newer than this "
            f"metricface reads ({_VERSION}); upgrade metricface"
        )
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None and ckpt.get(name) is None:
            raise ValueError(f"{name} was given but {str(path)!r} holds no {name} state")
    if model is not None:
        target = unwrap_model(model)
        prefix = _prefix_of(target.state_dict(), ckpt["model"])
        if prefix:
            raise ValueError(
                f"model's weights are stored under {prefix!r} in {str(path)!r} (beside other "
                f"modules): load them with metricface.checkpoint.load_backbone(path, model, "
                f"prefix={prefix!r}), or pass the module that holds them all"
            )
        target.load_state_dict(ckpt["model"], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng or (restore_rng is None and optimizer is not None):
        set_rng_state(ckpt["rng"])
    return ckpt


def _read(path: str | os.PathLike[str], map_location: Any) -> Any:
    """``torch.load(path, weights_only=True)``, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain "
            f"Python values, which torch.load(weights_only=True) does not execute ({exc})"
        ) from exc
    except (EOFError, KeyError, RuntimeError, OSError) as exc:
        # what torch raises on a cut-short or garbled file; an error from a complete archive
        # (e.g. a CUDA map_location on a CPU machine) or a permission error is not about that
        if isinstance(exc, PermissionError) or (
            isinstance(exc, (RuntimeError, OSError))
            and zipfile.is_zipfile(path)
            and "PytorchStreamReader" not in str(exc)
        ):
            raise
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: the file is truncated or corrupt (e.g. a "
            f"copy or a save that did not finish), or was not written by torch.save "
            f"({type(exc).__name__}: {exc})"
        ) from exc


#: Wrapper prefixes that carry no meaning for the weights: ``torch.compile`` (``_orig_mod.``)
#: and ``DistributedDataParallel``/``DataParallel`` (``module.``), at any depth.
_WRAPPER_PARTS = ("_orig_mod", "module")


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every ``_orig_mod.``/``module.`` key segment removed, where that is safe.

    A model whose own submodule is called ``module`` keeps it: the segments are removed only
    when no two keys collide and no key becomes empty.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = [p for p in key.split(".") if p not in _WRAPPER_PARTS]
        new = ".".join(parts)
        if not parts or new in out:
            return dict(state)
        out[new] = value
    return out


def _under(stored: Mapping[str, Any], prefix: str) -> set[str]:
    """Keys of ``stored`` that start with ``prefix``, without it."""
    return {k[len(prefix) :] for k in stored if k.startswith(prefix)}


def _prefix_of(expected: Mapping[str, Any], stored: Mapping[str, Any]) -> str | None:
    """The prefix under which ``stored`` holds exactly the keys of ``expected``: ``""`` when
    the keys match as they are, ``"backbone."`` (say) when they sit under it, ``None`` when no
    prefix does."""
    want = set(expected)
    if not want:
        return None
    if want <= set(stored):
        return ""
    first = next(iter(expected))
    for key in stored:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if _under(stored, prefix) == want:
                return prefix
    return None


def load_backbone(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    prefix: str | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Load a network's weights out of a checkpoint, safely, for inference or fine-tuning.

    Reads ``path`` with ``torch.load(..., weights_only=True)``, so no pickled code runs, and
    leaves every random generator alone. ``path`` may hold a :func:`save_checkpoint`
    checkpoint, such as those the example trainers write (their backbone is stored beside the
    loss's class centers under ``backbone.``), or a bare ``state_dict()``. ``torch.compile``
    (``_orig_mod.``) and DDP (``module.``) prefixes are removed first, on both sides.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    model : torch.nn.Module
        The network to fill, built with the same architecture (e.g. from the checkpoint's
        ``extra["config"]``); wrappers are removed. Every one of its weights must be found.
    prefix : str, optional
        Where the weights sit in the checkpoint, e.g. ``"backbone."``. By default the keys are
        matched as they are and, failing that, under the one prefix that holds all of them.
    map_location : str or torch.device, optional
        Where tensors are loaded (``load_state_dict`` then copies them to the model's device).

    Returns
    -------
    dict
        The checkpoint's other entries: ``"epoch"``, ``"step"``, ``"extra"`` (with the
        training ``"config"`` the examples store) and ``"prefix"`` (the prefix used); empty
        apart from ``"prefix"`` for a bare state dict.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt or unsafe to load, or its weights do not fit ``model``: no
        prefix holds all of them, or their shapes differ (the message names them).

    Examples
    --------
    >>> from metricface.backbones import iresnet18
    >>> from metricface.checkpoint import load_backbone, save_checkpoint
    >>> trained = torch.nn.ModuleDict({"backbone": iresnet18(embedding_dim=32, width=0.125)})
    >>> _ = save_checkpoint("run.pt", model=trained, epoch=1, step=10)
    >>> model = iresnet18(embedding_dim=32, width=0.125)
    >>> load_backbone("run.pt", model)["prefix"]
    'backbone.'
    >>> torch.equal(model.fc.weight, trained["backbone"].fc.weight)
    True
    >>> os.remove("run.pt")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str or None, got {type(prefix).__name__}")
    ckpt = _read(path, map_location)
    if isinstance(ckpt, dict) and ckpt.get("format") == _FORMAT:
        stored, info = ckpt["model"], {k: ckpt[k] for k in ("epoch", "step", "extra") if k in ckpt}
    elif isinstance(ckpt, Mapping) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        stored, info = ckpt, {}
    else:
        raise ValueError(
            f"{str(path)!r} is neither a metricface checkpoint nor a state dict (a mapping of "
            "names to tensors)"
        )
    target = unwrap_model(model)
    expected = _strip_wrappers(target.state_dict())
    stored = _strip_wrappers(stored)
    found = _prefix_of(expected, stored) if prefix is None else prefix
    if found is None or not set(expected) <= _under(stored, found):
        groups = sorted({k.split(".", 1)[0] + "." for k in stored if "." in k})
        missing = [k for k in expected if (found or "") + k not in stored]
        raise ValueError(
            f"{str(path)!r} does not hold the weights of this {type(target).__name__}"
            + (f" under prefix={prefix!r}" if prefix is not None else "")
            + f": {len(missing)} of its {len(expected)} weights are missing, e.g. "
            f"{missing[:3]}; the checkpoint's top-level groups are {groups[:8]}"
        )
    weights = {k: stored[found + k] for k in expected}
    wrong = [
        f"{k}: {tuple(weights[k].shape)} stored, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if isinstance(v, torch.Tensor) and weights[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"{str(path)!r} holds weights of other shapes than this {type(target).__name__} "
            f"(another architecture or width?): {'; '.join(wrong[:3])}"
        )
    own = dict(zip(expected, target.state_dict()))  # stripped name -> the model's own name
    target.load_state_dict({own[k]: v for k, v in weights.items()}, strict=True)
    info["prefix"] = found
    return info
