"""The architecture: shapes, backward, padding, output stride, backbone surface, slim names."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from mobilenets import MobilenetsError, create_model, list_models, mobilenet_v1
from mobilenets.models.layers import Conv2dSame, same_pad_amounts
from mobilenets.models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS, scaled_depth, slim_name_map
from mobilenets.models.registry import get_spec

NAMES = list_models()


def test_registry_has_the_16_official_names():
    assert len(NAMES) == 16
    expected = {f"mobilenet_v1_{a}_{r}" for a in ("1.0", "0.75", "0.5", "0.25") for r in (224, 192, 160, 128)}
    assert set(NAMES) == expected
    assert list_models("*_0.25_*") == [n for n in NAMES if "_0.25_" in n]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_every_config(name):
    spec = get_spec(name)
    model = create_model(name)
    x = torch.randn(2, 3, spec.resolution, spec.resolution, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 1001)
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_features(x.detach())
    assert feats.shape == (2, scaled_depth(1024, spec.alpha), -(-spec.resolution // 32), -(-spec.resolution // 32))


def test_table_of_the_body():
    assert [d.stride for d in MOBILENET_V1_CONV_DEFS[1:]] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [d.depth for d in MOBILENET_V1_CONV_DEFS[1:]] == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    assert MOBILENET_V1_CONV_DEFS[0] == ("conv", 2, 32)


@pytest.mark.parametrize(("depth", "alpha", "expected"), [(32, 0.25, 8), (64, 0.25, 16), (32, 0.1, 8), (1024, 0.6, 614), (100, 0.333, 33)])
def test_width_rule_truncates_with_min_depth(depth, alpha, expected):
    assert scaled_depth(depth, alpha) == expected


@pytest.mark.parametrize("size", [32, 33, 57, 100, 225])
def test_any_input_size_and_class_count(size):
    model = mobilenet_v1(alpha=0.6, resolution=200, num_classes=7).eval()
    assert model(torch.randn(1, 3, size, size + 3)).shape == (1, 7)


def test_bn_and_dropout_follow_slim():
    model = create_model("mobilenet_v1_0.25_128")
    bn = model.features.Conv2d_0.bn
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(3e-4)
    assert model.dropout.p == pytest.approx(0.001)
    assert all(m.bias is None for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "classifier")
    assert model.classifier.bias is not None and model.classifier.kernel_size == (1, 1)
    assert isinstance(model.features.Conv2d_1_depthwise.act, torch.nn.ReLU6)


@pytest.mark.parametrize(("size", "kernel", "stride", "dilation", "expected"),
                         [(4, 3, 2, 1, (0, 1)), (5, 3, 2, 1, (1, 1)), (224, 3, 2, 1, (0, 1)), (7, 3, 1, 1, (1, 1)),
                          (7, 3, 1, 2, (2, 2)), (6, 1, 1, 1, (0, 0)), (113, 3, 2, 1, (1, 1))])  # fmt: skip
def test_same_padding_amounts(size, kernel, stride, dilation, expected):
    assert same_pad_amounts(size, kernel, stride, dilation) == expected


def test_same_padding_by_hand():
    # 4x4 input 0..15, 3x3 kernel of ones, stride 2. TF SAME pads one row/column at the
    # bottom/right only, so the windows are rows/cols {0,1,2} and {2,3,pad}.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(x)[0, 0]
    assert out.tolist() == [[45.0, 39.0], [66.0, 50.0]]
    # PyTorch's symmetric padding would centre the windows differently:
    assert F.conv2d(x, conv.weight, stride=2, padding=1)[0, 0].tolist() == [[10.0, 24.0], [51.0, 90.0]]


def test_symmetric_padding_option_differs_at_stride_2():
    same = mobilenet_v1(0.25, 64).eval()
    sym = mobilenet_v1(0.25, 64, padding="symmetric").eval()
    sym.load_state_dict(same.state_dict())
    x = torch.randn(1, 3, 64, 64)
    a, b = same.forward_features(x), sym.forward_features(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride(output_stride):
    model = create_model("mobilenet_v1_0.25_224", output_stride=output_stride).eval()
    assert model.forward_features(torch.randn(1, 3, 224, 224)).shape[-1] == 224 // output_stride
    # the dilation follows slim: the first layer past the target stride keeps rate 1
    if output_stride == 16:
        assert model.features.Conv2d_12_depthwise.conv.stride == (1, 1)
        assert model.features.Conv2d_12_depthwise.conv.dilation == (1, 1)
        assert model.features.Conv2d_13_depthwise.conv.dilation == (2, 2)
    if output_stride == 8:
        assert model.features.Conv2d_13_depthwise.conv.dilation == (4, 4)
    assert model.feature_info[-1]["reduction"] == output_stride


def test_backbone_surface():
    model = create_model("mobilenet_v1_0.5_160").eval()
    x = torch.randn(2, 3, 160, 160)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 512)
    assert torch.allclose(model.forward_head(feats), model(x))
    names = model.endpoint_names
    assert names[0] == "Conv2d_0" and names[1] == "Conv2d_1_depthwise" and names[-1] == "Conv2d_13_pointwise"
    assert len(names) == 27 and len(model.feature_info) == 27
    eps = model.forward_endpoints(x, ["Conv2d_3_pointwise", "Conv2d_13_pointwise"])
    assert eps["Conv2d_3_pointwise"].shape == (2, 64, 40, 40)
    assert torch.equal(eps["Conv2d_13_pointwise"], feats)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    with pytest.raises(MobilenetsError, match="unknown endpoint"):
        model.forward_endpoints(x, ["Conv2d_99"])


@pytest.mark.parametrize("name", ["mobilenet_v1_1.0_224", "mobilenet_v1_0.25_128"])
def test_slim_name_map_covers_every_tensor_once(name):
    model = create_model(name)
    mapping = slim_name_map(model)
    keys = list(model.state_dict())
    assert sorted(mapping) == sorted(keys)
    assert len(set(mapping.values())) == len(keys)
    # 27 conv scopes x (weights, gamma, beta, mean, variance) + logits weights and biases
    assert len(keys) == 27 * 5 + 2
    assert mapping["features.Conv2d_3_pointwise.conv.weight"] == "MobilenetV1/Conv2d_3_pointwise/weights"
    assert mapping["features.Conv2d_3_depthwise.conv.weight"] == "MobilenetV1/Conv2d_3_depthwise/depthwise_weights"
    assert mapping["features.Conv2d_0.bn.running_var"] == "MobilenetV1/Conv2d_0/BatchNorm/moving_variance"
    assert mapping["classifier.bias"] == "MobilenetV1/Logits/Conv2d_1c_1x1/biases"
    pattern = re.compile(r"^MobilenetV1/(Conv2d_(0|([1-9]|1[0-3])_(depthwise|pointwise))|Logits/Conv2d_1c_1x1)/"
                         r"(weights|depthwise_weights|biases|BatchNorm/(gamma|beta|moving_mean|moving_variance))$")  # fmt: skip
    assert all(pattern.match(v) for v in mapping.values())


def test_state_dict_round_trip_and_stock_bn_keys():
    a, b = create_model("mobilenet_v1_0.25_128"), create_model("mobilenet_v1_0.25_128")
    sd = a.state_dict()
    sd["features.Conv2d_0.bn.num_batches_tracked"] = torch.tensor(3)  # as stock BatchNorm writes
    b.load_state_dict(sd)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(("kwargs", "match"),
                         [({"alpha": 0}, "alpha"), ({"alpha": -1}, "alpha"), ({"resolution": 31}, "resolution"),
                          ({"output_stride": 4}, "output_stride"), ({"padding": "valid"}, "padding")])  # fmt: skip
def test_bad_configs_raise_clear_errors(kwargs, match):
    with pytest.raises(MobilenetsError, match=match):
        mobilenet_v1(**kwargs)


def test_unknown_name_suggests_close_names():
    with pytest.raises(MobilenetsError, match=r"did you mean mobilenet_v1_0.75_192"):
        create_model("mobilenet_v1_0.75_193")


# --- features_only and the contract -------------------------------------------------------------

_STAGES = ((1, 64, 2), (3, 128, 4), (5, 256, 8), (11, 512, 16), (13, 1024, 32))  # endpoint, base depth, stride


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", NAMES)
def test_features_only_maps_and_info(name, output_stride):
    spec = get_spec(name)
    feats = create_model(name, features_only=True, output_stride=output_stride).eval()
    with torch.no_grad():
        maps = feats(torch.zeros(1, 3, spec.resolution, spec.resolution))
    assert len(maps) == len(feats.feature_info) == 5
    for (layer, depth, stride), m, info in zip(_STAGES, maps, feats.feature_info):
        red = min(stride, output_stride)  # TF-Slim: strides past the output stride become dilation
        chs = max(int(depth * spec.alpha), 8)
        side = -(-spec.resolution // red)  # TF 'SAME': ceil
        assert tuple(m.shape) == (1, chs, side, side), (name, layer)
        assert (info["num_chs"], info["reduction"], info["name"]) == (chs, red, f"Conv2d_{layer}_pointwise")


def test_features_only_out_indices_and_weights_keys():
    full = create_model("mobilenet_v1_0.25_128")
    feats = create_model("mobilenet_v1_0.25_128", features_only=True, out_indices=(3, 4))
    assert [i["name"] for i in feats.feature_info] == ["Conv2d_11_pointwise", "Conv2d_13_pointwise"]
    assert set(feats.state_dict()) == {k for k in full.state_dict() if not k.startswith("classifier.")}
    with pytest.raises(MobilenetsError, match="out_indices"):
        create_model("mobilenet_v1_0.25_128", features_only=True, out_indices=(5,))


@pytest.mark.parametrize("name", NAMES)
def test_every_model_has_its_contract(name):
    spec = get_spec(name)
    cfg = create_model(name).pretrained_cfg
    assert (cfg.task, cfg.arch, cfg.num_classes, cfg.label_offset) == ("classify", "mobilenet_v1", 1001, 1)
    assert cfg.input_size == (3, spec.resolution, spec.resolution) and cfg.arch_cfg["alpha"] == spec.alpha
    for tag, entry in spec.weights.items():  # the published weights: TF-Slim's eval contract and the table
        assert (entry.cfg.crop_fraction, entry.cfg.mean, entry.cfg.decode) == (0.875, (0.5, 0.5, 0.5), "tf")
        assert entry.cfg.labels[0] == "background" and len(entry.cfg.labels) == 1001
        assert entry.cfg.metrics["macs_m"] == spec.paper.macs_m and (entry.cfg.quantization is not None) == (tag == "imagenet_quant")


def test_weights_load_in_eval_mode_and_unpublished_options_are_refused():
    from .conftest import shared_path

    path = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    model = create_model("mobilenet_v1_0.25_224", weights=str(path))
    assert not model.training and model.pretrained_cfg.source == str(path)
    with pytest.raises(MobilenetsError, match="padding='symmetric' was never published"):
        create_model("mobilenet_v1_0.25_224", weights=str(path), padding="symmetric")
