"""DeepLab v3 / MobileNet v2: Google's deeplabv3.tflite imported exactly, checked against LiteRT.

References come from LiteRT running the file (never from our code) and from TFLite
Support's golden category mask. The golden was made from a decode close to Pillow's
accurate-DCT one (TFLite Support's tests decode with stb_image): with it the file itself
and our model both reproduce the golden on every pixel; TF's fast-DCT decode moves ~0.4%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenets.data.images import load_image
from mobilenets.data.transforms import tf1_resize_bilinear
from mobilenets.data.voc import IGNORE_INDEX, read_voc_mask, voc_colormap, voc_labels, voc_palette
from mobilenets.errors import ConfigError, WeightsError
from mobilenets.models.deeplab import DeepLabV3, tf_name_map
from mobilenets.models.mobilenet_v2 import layer_defs, make_divisible, mobilenet_v2, slim_name_map
from mobilenets.weights.deeplab_tflite import load_deeplab, read_deeplab_tflite

from .conftest import shared_path

DEEPLAB = "models/deeplabv3.tflite"
SEG_IMAGE = "images/segmentation_input_rotation0.jpg"
SEG_GOLDEN = "images/segmentation_golden_rotation0.png"
VOC_IDS = ("0", "1", "8", "20", "23", "60", "114", "120", "166", "293", "294", "417", "474", "582")


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    return load_deeplab(shared_path(DEEPLAB))


@pytest.fixture(scope="module")
def litert():
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    it = interpreter_mod.Interpreter(str(shared_path(DEEPLAB)), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:  # 257 x 257 x 3 float32 in [-1, 1] -> 257 x 257 x 21 logits
        it.set_tensor(inp["index"], x[None].astype(np.float32))
        it.invoke()
        return it.get_tensor(out["index"])[0].copy()

    run.input, run.output = inp, out
    return run


def _input(path, decode: str = "tf") -> np.ndarray:
    """Whole image resized to 257 x 257 (TF1 bilinear), then (x - 0.5) / 0.5: HWC float32."""
    x = np.asarray(load_image(path, decode=decode), np.uint8)
    return (tf1_resize_bilinear(x, 257, 257) - np.float32(0.5)) / np.float32(0.5)


def _ours(model: DeepLabV3, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])
    return y[0].numpy().transpose(1, 2, 0)


# --- (a) parity with LiteRT on the same float tensors ---------------------------------


def test_file_is_what_the_brief_says(litert):
    assert litert.input["name"] == "sub_7" and list(litert.input["shape"]) == [1, 257, 257, 3]
    assert litert.output["name"] == "ResizeBilinear_3" and list(litert.output["shape"]) == [1, 257, 257, 21]
    assert litert.input["dtype"] == np.float32


@pytest.mark.parametrize("image", [f"voc2012_seg_samples/{i}_image.png" for i in VOC_IDS] + [SEG_IMAGE])
def test_logits_match_litert(model, litert, image):
    x = _input(shared_path(image))
    ref = litert(x)
    ours = _ours(model, x)
    assert ours.shape == ref.shape == (257, 257, 21)
    diff = float(np.abs(ours - ref).max())
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    assert diff <= 1e-3, f"max |logit diff| {diff:.2e}"  # measured <= 1.9e-4 (logits reach ~40)
    assert agree >= 0.999, f"argmax agreement {agree:.5f}"  # measured 1.0 on all 15


def test_any_input_size_gives_logits_at_that_size(model):
    with torch.no_grad():
        y = model(torch.zeros(2, 3, 97, 130))
    assert y.shape == (2, 21, 97, 130)


# --- (b) end to end against TFLite Support's golden mask ------------------------------


def test_golden_category_mask(model, litert):
    from PIL import Image

    golden = np.asarray(Image.open(shared_path(SEG_GOLDEN)))
    assert golden.shape == (257, 257) and set(np.unique(golden)) <= {0, 130, 150}  # bg, horse, person (x 10)
    x = _input(shared_path(SEG_IMAGE), decode="pillow")  # the image is 257 x 257: the resize is the identity
    logits = _ours(model, x)
    # ImageSegmenter: the category mask is at the output tensor's size (257 x 257, no resize
    # to the image), class = first index whose logit beats the running max starting at 0.0.
    mask = np.where(logits.max(-1) > 0, logits.argmax(-1), 0)
    agree = float((mask * 10 == golden).mean())
    assert agree >= 0.995, f"golden agreement {agree:.5f}"  # measured 1.0 (0.9957 with TF's fast-DCT decode)
    ref = litert(x)
    assert float((np.where(ref.max(-1) > 0, ref.argmax(-1), 0) * 10 == golden).mean()) >= 0.995


@pytest.mark.slow
def test_voc_samples_are_segmented_sensibly(model):
    """Not a benchmark: pixel accuracy against the 14 VOC ground-truth masks (ignore excluded)."""
    import torch.nn.functional as F

    accs = []
    for i in VOC_IDS:
        gt = read_voc_mask(shared_path(f"voc2012_seg_samples/{i}_target.png"))
        x = torch.from_numpy(_input(shared_path(f"voc2012_seg_samples/{i}_image.png")).transpose(2, 0, 1).copy())
        with torch.no_grad():
            y = F.interpolate(model(x[None]), size=gt.shape, mode="bilinear", align_corners=True)
        pred, valid = y[0].argmax(0).numpy(), gt != IGNORE_INDEX
        accs.append(float((pred[valid] == gt[valid]).mean()))
    assert np.mean(accs) > 0.9 and min(accs) > 0.7, accs  # measured mean 0.954, min 0.745 (582: motorbike)


# --- (c) the MobileNet v2 table against the file ----------------------------------------


def test_channel_counts_at_0_5_equal_the_files():
    from mobilenets.weights.tflite import TFLiteGraph

    g = TFLiteGraph(shared_path(DEEPLAB))
    shapes = [tuple(int(s) for s in g.tensor(g.sg.Operators(i).Inputs(1)).ShapeAsNumpy())
              for i, name in enumerate(g.ops) if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]  # fmt: skip
    # The file, in execution order: 3x3 stem; per block [expand] depthwise project; then the head.
    got = [s[3] if len(s) == 4 and s[0] == 1 and s[1] == 3 else s[0] for s in shapes]  # depthwise: 1HWC
    expected = []
    for d in layer_defs(0.5, divisible_by=1, min_depth=1, output_stride=8, last_conv=False):
        if d.name == "Conv":
            expected.append(d.out_ch)
        else:
            expected += ([d.expand_ch] if d.expand_ch else []) + [d.expand_ch or d.in_ch, d.out_ch]
    expected += [256, 256, 256, 21]  # image_pooling, aspp0, concat_projection, logits
    assert got == expected
    defs = layer_defs(0.5, 1, 1, 8, last_conv=False)
    assert [d.out_ch for d in defs] == [16, 8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
    assert [d.dilation for d in defs[7:]] == [1, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4]  # slim: a rate applies after its stride
    assert defs[-1].reduction == 8 and len(defs) == 18  # no 1x1 1280 conv (DeepLab stops at layer_18)


def test_state_dict_from_file_fits_the_model_exactly():
    lw = read_deeplab_tflite(shared_path(DEEPLAB))
    assert lw.meta["deeplab_kwargs"] == {"backbone": "mobilenet_v2", "depth_multiplier": 0.5, "num_classes": 21,
                                         "output_stride": 8, "image_pooling": True}  # fmt: skip
    ref = DeepLabV3().state_dict()
    assert set(lw.state_dict) == set(ref)
    assert all(lw.state_dict[k].shape == ref[k].shape for k in ref)


def test_make_divisible_is_slims():
    assert [make_divisible(v, 8) for v in (12, 16, 20, 4, 35 * 0.35)] == [16, 16, 24, 8, 16]
    assert make_divisible(12, 1, 1) == 12 and make_divisible(1280 * 1.4, 8) == 1792
    slim = [d.out_ch for d in layer_defs(0.5)]  # the classifier rounds to 8: 24 * 0.5 -> 16, not 12
    assert slim[:4] == [16, 8, 16, 16] and slim[-1] == 1280  # finegrain: the last conv stays 1280


@pytest.mark.parametrize(
    "dm,params_m", [(1.4, 6.06), (1.3, 5.34), (1.0, 3.47), (0.75, 2.61), (0.5, 1.95), (0.35, 1.66)]
)
def test_mobilenet_v2_params_match_the_published_table(dm, params_m):
    """slim/nets/mobilenet/README.md 'Parameters (M)': conv weights and logits, BN excluded."""
    net = mobilenet_v2(dm)
    n = sum(p.numel() for k, p in net.named_parameters() if ".bn." not in k)
    assert round(n / 1e6, 2) == params_m


def test_mobilenet_v2_surface():
    net = mobilenet_v2(1.0, 224).eval()
    x = torch.zeros(1, 3, 96, 96)
    with torch.no_grad():
        assert net(x).shape == (1, 1001)
        maps = net.forward_endpoints(x, ["layer_4/depthwise_output", "expanded_conv_3", "layer_19"])
        inter = net.forward_intermediates(x, [1, -1])
    assert maps["layer_4/depthwise_output"].shape == (1, 144, 24, 24)  # DeepLab's decoder feature
    assert maps["expanded_conv_3"].shape == (1, 32, 12, 12) and maps["layer_19"].shape == (1, 1280, 3, 3)
    assert [t.shape[1] for t in inter] == [16, 1280]
    assert [(i["num_chs"], i["reduction"]) for i in net.feature_info][-2:] == [(320, 32), (1280, 32)]
    names = slim_name_map(net)
    assert (
        names["features.expanded_conv_3.depthwise.conv.weight"]
        == "MobilenetV2/expanded_conv_3/depthwise/depthwise_weights"
    )
    assert (
        names["features.expanded_conv.project.bn.running_var"]
        == "MobilenetV2/expanded_conv/project/BatchNorm/moving_variance"
    )
    assert names["classifier.bias"] == "MobilenetV2/Logits/Conv2d_1c_1x1/biases"
    assert len(set(names.values())) == len(names)
    assert net.pretrained_cfg.arch == "mobilenet_v2" and net.name == "mobilenet_v2_1.0_224"
    with pytest.raises(ConfigError):
        net.forward_endpoints(x, ["layer_99"])
    with pytest.raises(ConfigError):
        mobilenet_v2(0.5, output_stride=4)


# --- (d) other networks are refused with one line ---------------------------------------


@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_224_1_default_1.tflite",
                                  "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"])  # fmt: skip
def test_other_networks_are_refused(name):
    with pytest.raises(WeightsError) as e:
        read_deeplab_tflite(shared_path("models", name))
    msg = str(e.value)
    assert "not a DeepLab v3 / MobileNet v2" in msg and "\n" not in msg


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError):
        read_deeplab_tflite(bad)


# --- the model's contract and variants ----------------------------------------------


def test_pretrained_cfg_and_outputs(model):
    cfg = model.pretrained_cfg
    assert (cfg.task, cfg.arch, cfg.num_classes, cfg.label_offset) == ("segment", "deeplabv3_mobilenet_v2", 21, 0)
    assert cfg.input_size == (3, 257, 257) and cfg.crop_fraction == 1.0 and cfg.mean == cfg.std == (0.5, 0.5, 0.5)
    assert cfg.labels == voc_labels() and cfg.labels[15] == "person"
    assert model.outputs[0].name == "logits" and model.outputs[0].shape == (-1, 21, 257, 257)
    assert not model.training


HEAD_VARIANTS = [
    {"atrous_rates": True, "decoder": True},
    {"output_stride": 16, "atrous_rates": (6, 12, 18)},
    {"backbone": "mobilenet_v1", "depth_multiplier": 0.25, "output_stride": 16, "decoder": True},
]


@pytest.mark.parametrize("kw", HEAD_VARIANTS)
def test_head_variants(kw):
    m = DeepLabV3(**kw).eval()
    with torch.no_grad():
        y = m(torch.zeros(1, 3, 65, 81))
    assert y.shape == (1, 21, 65, 81)
    names = tf_name_map(m)
    assert len(set(names.values())) == len(names)
    if kw.get("atrous_rates"):
        assert names["aspp1.depthwise.conv.weight"] == "aspp1_depthwise/depthwise_weights"
    if kw.get("decoder"):
        assert names["decoder.decoder_conv0.pointwise.bn.bias"] == "decoder/decoder_conv0_pointwise/BatchNorm/beta"


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError):
        DeepLabV3(output_stride=32)
    with pytest.raises(ConfigError):
        DeepLabV3(backbone="resnet")


# --- VOC labels, palette and masks ---------------------------------------------------


def test_voc_labels_match_the_shared_file():
    text = shared_path("labels", "pascal_voc_segmentation_labels.txt").read_text().splitlines()
    assert list(voc_labels()) == text[:21]
    assert voc_palette().shape == (21, 3) and (voc_colormap(21) == voc_palette()).all()
    assert tuple(voc_colormap()[IGNORE_INDEX]) == (224, 224, 192)


def test_voc_masks_rgb_and_palette(tmp_path):
    from PIL import Image

    from mobilenets.data.voc import mask_to_image

    gt = read_voc_mask(shared_path("voc2012_seg_samples/0_target.png"))  # RGB-coded
    assert gt.shape == (513, 513) and set(np.unique(gt)) == {0, 1, IGNORE_INDEX}
    p = tmp_path / "m.png"
    mask_to_image(gt).save(p)
    assert Image.open(p).mode == "P" and (read_voc_mask(p) == gt).all()
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    from mobilenets.errors import ImageError

    with pytest.raises(ImageError, match="not in the VOC palette"):
        read_voc_mask(tmp_path / "bad.png")
