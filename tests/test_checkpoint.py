# ruff: noqa: NPY002  (the global NumPy generator is exactly what checkpoints must restore)
"""Checkpoints: atomic writes, weights_only loading, exact resume."""

from __future__ import annotations

import collections
import enum
import os
import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from metricface.checkpoint import (
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)


def _draws():
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.randn(1).tolist(),  # exercises NumPy's cached gaussian
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
    )


def test_rng_state_roundtrip_all_generators():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # leave a cached gaussian behind
    random.gauss(0, 1)
    state = get_rng_state()
    first = _draws()
    set_rng_state(state)
    assert _draws() == first


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _make(seed=0):
    torch.manual_seed(seed)
    model = _Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=3),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20),
        ],
        milestones=[3],
    )
    return model, opt, sched


def _train(model, opt, sched, data, epochs, start=0):
    x_all, y_all = data
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_all, y_all), batch_size=8, shuffle=True
    )
    for _ in range(start, epochs):
        for x, y in loader:
            # augmentations drawn from all three generators, as a data pipeline would
            x = x + 0.01 * torch.randn_like(x) + float(np.random.rand()) * 0.01
            x = x * (1 + 0.01 * random.random())
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))

    def seed_all():
        torch.manual_seed(5)
        np.random.seed(5)
        random.seed(5)

    model, opt, sched = _make()
    seed_all()
    _train(model, opt, sched, data, epochs=4)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = _make()
    seed_all()
    _train(model, opt, sched, data, epochs=2)
    save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, epoch=2, step=10
    )
    # scramble every generator, as a fresh process would
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    model2, opt2, sched2 = _make(seed=123)
    ckpt = load_checkpoint(tmp_path / "c.pt", model=model2, optimizer=opt2, scheduler=sched2)
    assert (ckpt["epoch"], ckpt["step"]) == (2, 10)
    _train(model2, opt2, sched2, data, epochs=4, start=ckpt["epoch"])
    resumed = model2.state_dict()
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "metricface.checkpoint", "model": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(raw)


def test_checkpoint_loads_with_plain_weights_only(tmp_path):
    model, opt, sched = _make()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    save_checkpoint(
        tmp_path / "c.pt",
        model=model,
        optimizer=opt,
        scheduler=sched,
        scaler=scaler,
        epoch=1,
        step=3,
        extra={"config": {"lr": 0.1, "name": "x", "sizes": (1, 2)}, "eer": 0.25},
    )
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    assert ckpt["extra"]["config"]["sizes"] == (1, 2)
    assert torch.equal(ckpt["model"]["body.0.weight"], model.body[0].weight)


def test_unloadable_extra_is_rejected_before_writing(tmp_path):
    model, _, _ = _make()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, epoch=1, step=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\['fn'\]"):
        save_checkpoint(path, model=model, epoch=2, step=2, extra={"fn": lambda x: x})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_failed_write_leaves_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    model, _, _ = _make()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, epoch=1, step=1)
    before = path.read_bytes()

    def boom(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, epoch=2, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_wrapped_model_saves_plain_keys(tmp_path):
    model, _, _ = _make()
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    save_checkpoint(tmp_path / "c.pt", model=wrapped, epoch=0, step=0)
    fresh, _, _ = _make(seed=7)
    load_checkpoint(tmp_path / "c.pt", model=fresh, restore_rng=False)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_errors(tmp_path):
    model, opt, _ = _make()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a metricface checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="directory must exist"):
        save_checkpoint(tmp_path / "no" / "c.pt", model=model, epoch=0, step=0)
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path / "c.pt", model=model, epoch=-1, step=0)
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "c.pt", model=object(), epoch=0, step=0)
    save_checkpoint(tmp_path / "c.pt", model=model, epoch=0, step=0)
    with pytest.raises(ValueError, match="holds no optimizer"):
        load_checkpoint(tmp_path / "c.pt", optimizer=opt)


@pytest.mark.parametrize(
    "value",
    [
        np.float64(0.9),
        np.int64(3),
        np.str_("x"),
        collections.defaultdict(int, a=1),
        collections.namedtuple("Pair", "a b")(1, 2),
        enum.IntEnum("Mode", "A B").A,
    ],
    ids=["np.float64", "np.int64", "np.str_", "defaultdict", "namedtuple", "IntEnum"],
)
def test_subclasses_of_plain_types_are_rejected_before_writing(tmp_path, value):
    """They pass isinstance checks but torch.load(weights_only=True) refuses them."""
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\['v'\]"):
        save_checkpoint(
            tmp_path / "c.pt", model=nn.Linear(2, 2), epoch=0, step=0, extra={"v": value}
        )
    assert not list(tmp_path.iterdir())


@given(
    extra=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_whatever_save_accepts_loads_with_weights_only(tmp_path, extra):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(2, 2), epoch=0, step=0, extra={"v": extra})
    loaded = torch.load(path, weights_only=True)["extra"]["v"]
    assert repr(loaded) == repr(extra)  # repr: NaN != NaN, but prints the same


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", model=nn.Linear(2, 2), epoch=0, step=0)
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_file_raises_a_clear_error_naming_it(tmp_path, damage):
    """A checkpoint cut short by a full disk or a copy is reported as such, with its path."""
    model, _, _ = _make()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, epoch=1, step=1)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:
        data = b"hello world" * 10
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"c\.pt.*(truncated|corrupt)"):
        load_checkpoint(path, model=model)
