"""Backbones under channels_last, autocast, torch.compile and ONNX export."""

from __future__ import annotations

import pytest
import torch

import metricface.backbones as B


def _tiny() -> B.IResNet:
    torch.manual_seed(0)
    return B.iresnet18(embedding_dim=16, width=0.125, input_size=32).eval()


@pytest.mark.parametrize(
    "build",
    [_tiny, lambda: B.resnet18(embedding_dim=16).eval(), lambda: B.resnet50(num_classes=5).eval()],
)
def test_channels_last_gives_the_same_output(build):
    model = build()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_cpu_bf16_autocast_forward_and_backward():
    model = _tiny().train()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).float()
    with torch.no_grad():
        full = model(x)
    assert (low - full).norm() / full.norm() < 0.05


@pytest.mark.parametrize(
    "build", [_tiny, lambda: B.resnet18(embedding_dim=16).eval()], ids=["iresnet", "resnet"]
)
def test_cpu_fp16_autocast_forward_and_backward(build):
    model = build().train()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        low = model(x).float()
    with torch.no_grad():
        full = model(x)
    assert (low - full).norm() / full.norm() < 1e-2  # float16 keeps 3 more bits than bfloat16


def test_autocast_with_normalize_keeps_unit_norm():
    model = B.iresnet18(embedding_dim=16, width=0.125, input_size=32, normalize=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(out.float().norm(dim=1), torch.ones(3), rtol=1e-2, atol=1e-2)


def test_bf16_channels_last_training_step_on_device(device):
    model = _tiny().train().to(device)
    x = torch.randn(4, 3, 32, 32, device=device)
    model = model.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(xc)
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        ref = model.eval()(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(xc).float()
    assert (low - ref).norm() / ref.norm() < 0.05


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = B.iresnet18(embedding_dim=8, width=0.125, input_size=16).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # the exporter traces with torch.export: ~15 s on one CPU core
def test_onnx_export_runs_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch's dynamo exporter needs it beside onnx
    from onnx.reference import ReferenceEvaluator

    model = _tiny()
    path = tmp_path / "iresnet.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    x = torch.randn(3, 3, 32, 32)  # another batch size than at export
    (out,) = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "build", [_tiny, lambda: B.resnet18(embedding_dim=16, small_input=True).eval()]
)
def test_torchvision_feature_extractor_traces_face_backbones(build):
    # torch.fx tracing (torchvision's create_feature_extractor) works for torchvision's ResNets;
    # the face options must not break it. Reference: forward hooks on the eager model.
    from torchvision.models.feature_extraction import create_feature_extractor

    model = build()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    hook = model.layer3.register_forward_hook(lambda mod, inp, out: seen.update(l3=out))
    with torch.no_grad():
        expected = model(x)
    hook.remove()
    extractor = create_feature_extractor(
        model,
        {"layer3": "l3", "fc": "emb"}
        if isinstance(model, B.ResNet)
        else {"layer3": "l3", "features": "emb"},
    )
    with torch.no_grad():
        out = extractor(x)
    torch.testing.assert_close(out["l3"], seen["l3"])
    torch.testing.assert_close(out["emb"], expected)
