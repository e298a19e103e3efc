"""TF1 detection-zoo SSD-MobileNet-v1 checkpoints: the OD API name map on files TensorFlow wrote.

Fixtures (tests/fixtures/make_ssd_ckpt.py, run with TensorFlow): ``ssd_tiny.ckpt``, a training
checkpoint of ``ssd_mobilenet_v1`` at depth multiplier 0.0625 with 3 classes + background
(EMA shadows, RMSProp/Momentum slots, fake-quant ranges, ``global_step``), the same raw
weights as an exported quantized-zoo ``ssd_zoo_tiny/model.ckpt``, and what
``tf.train.load_checkpoint`` reads back plus the raw head TF's ops compute.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.builder import model_from_weights
from mobilenets.errors import MobilenetsError, WeightsError
from mobilenets.models.cfg import INCEPTION_MEAN, INCEPTION_STD
from mobilenets.models.ssd import SSDMobileNetV1, tf_od_name_map
from mobilenets.weights import build_model, read_weights, save_weights
from mobilenets.weights.slim_ckpt import EMA_SUFFIX, Checkpoint, open_checkpoint, read_slim_checkpoint
from mobilenets.weights.ssd_ckpt import is_od_api_checkpoint, is_ssd_checkpoint, read_ssd_checkpoint, skipped_kind

from .conftest import CKPT, FIXTURES, SHARD, flip_byte

SSD = "ssd_tiny.ckpt"
ZOO = FIXTURES / "ssd_zoo_tiny" / "model.ckpt"
TF = np.load(FIXTURES / "ssd_tiny_expected.npz")
FE = "FeatureExtractor/MobilenetV1"


def tf_layout_to_ours(name: str, value: np.ndarray) -> np.ndarray:
    """The documented transforms, written out again: HWIO -> OIHW, depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)."""
    if name.endswith("depthwise_weights"):
        return value.transpose(2, 3, 0, 1)
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value


def names() -> dict[str, str]:
    with torch.device("meta"):
        return tf_od_name_map(SSDMobileNetV1(alpha=0.0625, num_classes=4))


def copy_ckpt(dest: Path, stem: str = "model.ckpt", src: str = SSD) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".index", SHARD):
        shutil.copy(FIXTURES / f"{src}{suffix}", dest / f"{stem}{suffix}")
    return dest / stem


def edited(**changes) -> Checkpoint:
    """The fixture's opened checkpoint with its variable table edited (the data stays TF's)."""
    ckpt = open_checkpoint(FIXTURES / SSD)
    entries = dict(ckpt.entries)
    for old, new in changes.items():
        old = old.replace("__", "/")
        entry = entries.pop(old)
        if isinstance(new, str):
            entries[new] = entry
        elif new is not None:
            entries[old] = dataclasses.replace(entry, shape=new)
    return Checkpoint(ckpt.prefix, ckpt.index, ckpt.num_shards, entries)


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".index", SHARD])
def test_fixture_loads_through_read_weights(suffix):
    w = read_weights(FIXTURES / f"{SSD}{suffix}")
    assert (w.format, w.alpha, w.num_classes, w.meta["ema"], w.meta["ema_tensors"]) == ("ssd-ckpt", 0.0625, 4, True, 6)
    cfg = w.cfg
    assert (cfg.task, cfg.arch, cfg.num_classes, cfg.label_offset, cfg.input_size) == ("detect", "ssd_mobilenet_v1", 4, 1,
                                                                                       (3, 300, 300))  # fmt: skip
    assert (cfg.mean, cfg.std, cfg.crop_fraction) == (INCEPTION_MEAN, INCEPTION_STD, 1.0)  # the OD API's [-1, 1]
    assert cfg.source == str(FIXTURES / SSD) and cfg.labels is None  # COCO's labels only for 91 classes
    assert (cfg.arch_cfg["alpha"], cfg.arch_cfg["min_depth"], cfg.arch_cfg["predictor_kernel"]) == (0.0625, 16, 1)


def test_every_tensor_is_tensorflows_after_the_layout_transforms():
    ema = read_ssd_checkpoint(FIXTURES / SSD).state_dict
    raw = read_ssd_checkpoint(FIXTURES / SSD, use_ema=False).state_dict
    theirs = names()
    assert set(ema) == set(raw) == set(theirs)
    shadows = 0
    for ours, name in theirs.items():
        if name not in TF:  # only Conv2d_5_pointwise's gamma: scale=False
            assert name == f"{FE}/Conv2d_5_pointwise/BatchNorm/gamma"
            assert torch.equal(ema[ours], torch.ones(16)) and torch.equal(raw[ours], torch.ones(16))
            continue
        np.testing.assert_array_equal(raw[ours].numpy(), tf_layout_to_ours(name, TF[name]), err_msg=name)
        want = TF[name + EMA_SUFFIX] if name + EMA_SUFFIX in TF else TF[name]
        shadows += name + EMA_SUFFIX in TF
        np.testing.assert_array_equal(ema[ours].numpy(), tf_layout_to_ours(name, want), err_msg=name)
    assert shadows == 6
    dw = "backbone.features.Conv2d_1_depthwise.conv.weight"
    assert ema[dw].shape == (16, 1, 3, 3) and not torch.equal(ema[dw], raw[dw])


def test_skipped_variables_are_reported_and_never_read():
    w = read_ssd_checkpoint(FIXTURES / SSD)
    assert w.meta["skipped"] == {"optimizer": 4, "quantization": 6, "global_step": 1}
    raw = read_ssd_checkpoint(FIXTURES / SSD, use_ema=False)
    assert raw.meta["skipped"] == {"optimizer": 4, "quantization": 6, "global_step": 1, "ema": 6}
    assert [skipped_kind(n) for n in (f"{FE}/Conv2d_0/weights/RMSProp_1", "BoxPredictor_0/ClassPredictor/weights/Momentum",
                                      f"{FE}/Conv2d_0/act_quant/min", f"{FE}/Conv2d_3_pointwise/weights_quant/max",
                                      "global_step", f"{FE}/Conv2d_0/weights{EMA_SUFFIX}", "learning_rate")] == [
        "optimizer", "optimizer", "quantization", "quantization", "global_step", "ema", "other"]  # fmt: skip


def test_bookkeeping_variables_are_tolerated():
    """QAT's moving-average ranges keep zero-debias state under the layer's scope; sync training adds its own."""
    ckpt = open_checkpoint(FIXTURES / SSD)
    step = ckpt.entries["global_step"]  # never read: any entry will do
    extra = {f"{FE}/Conv2d_0/act_quant/{FE}/Conv2d_0/act_quant/min/biased": step,
             f"{FE}/Conv2d_0/act_quant/{FE}/Conv2d_0/act_quant/max/local_step": step,
             f"{FE}/Conv2d_0/BatchNorm/moving_mean/local_step": step, "sync_rep_local_step": step}  # fmt: skip
    w = read_ssd_checkpoint(Checkpoint(ckpt.prefix, ckpt.index, ckpt.num_shards, {**ckpt.entries, **extra}))
    assert w.meta["skipped"] == {"optimizer": 4, "quantization": 8, "global_step": 1, "other": 2}


def test_zoo_file_name_and_quantized_layout_read_as_float_weights():
    w = read_weights(ZOO)  # .../model.ckpt, as in the detection-zoo tarballs
    assert (w.format, w.alpha, w.num_classes, w.meta["ema"], w.cfg.quantization) == ("ssd-ckpt", 0.0625, 4, False, None)
    assert w.meta["skipped"] == {"quantization": 188, "global_step": 1}  # 47 convs x weights/act x min/max: unused
    raw = read_ssd_checkpoint(FIXTURES / SSD, use_ema=False).state_dict
    assert all(torch.equal(w.state_dict[k], v) for k, v in raw.items())
    assert read_weights(f"{ZOO}.index").state_dict.keys() == raw.keys()



def test_zoo_tarball_reads_its_checkpoint(tmp_path):
    import tarfile

    tgz = tmp_path / "ssd_mobilenet_v1_quantized_300x300_coco14_sync_2018_07_18.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:  # the zoo layout: <name>/model.ckpt.{index,data-*} + a frozen graph
        for f in sorted(ZOO.parent.iterdir()):
            tar.add(f, arcname=f"ssd_mobilenet_v1_quantized_300x300_coco14_sync_2018_07_18/{f.name}")
    w = read_weights(tgz)
    raw = read_weights(ZOO).state_dict
    assert w.format == "ssd-ckpt" and w.meta["archive_member"].endswith("model.ckpt.index")
    assert w.state_dict.keys() == raw.keys() and all(torch.equal(w.state_dict[k], v) for k, v in raw.items())

# --- the model ---------------------------------------------------------------------------------------


def test_model_builds_and_reproduces_tensorflows_head():
    model = model_from_weights(read_weights(FIXTURES / SSD))
    assert isinstance(model, SSDMobileNetV1) and not model.training
    assert (model.alpha, model.num_classes, model.pretrained_cfg.task) == (0.0625, 4, "detect")
    x = torch.from_numpy(TF["x"]).permute(0, 3, 1, 2)  # odd sizes: TF 'SAME' pads bottom/right
    with torch.no_grad():
        box, logits = model.raw(x, logits=True)
        out = model.predict(x)
        assert torch.equal(model(x)["boxes"], out["boxes"])
    np.testing.assert_allclose(box.numpy(), TF["box_encodings_ema"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.numpy(), TF["class_logits_ema"], atol=1e-4, rtol=1e-4)
    k = model.postprocess.detections_per_image
    assert {n: tuple(v.shape) for n, v in out.items()} == {"boxes": (2, k, 4), "classes": (2, k), "scores": (2, k),
                                                           "count": (2,)}  # fmt: skip
    valid = out["classes"][out["scores"] > 0]
    assert bool(((valid >= 0) & (valid <= 2)).all())  # 3 real classes, background never reported


def test_saved_as_safetensors_and_rebuilt(tmp_path):
    model = model_from_weights(read_weights(ZOO))
    again = model_from_weights(read_weights(save_weights(model, tmp_path / "ssd.safetensors")))
    assert again.pretrained_cfg == model.pretrained_cfg and again.pretrained_cfg.source == str(ZOO)
    x = torch.from_numpy(TF["x"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.raw(x), again.raw(x)))


def test_detect_runs_and_the_wrong_kind_is_refused_in_one_line(tmp_path):
    from mobilenets.auto import load_predictor
    from mobilenets.tasks import check_task
    from mobilenets.tasks.detect import detect_images

    img = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(img)
    detector = load_predictor(weights=FIXTURES / SSD, backend="torch", resolution=64)
    (row,) = detect_images(detector, [img], score_threshold=0.0)
    assert (row.width, row.height) == (40, 48)
    classifier = load_predictor(weights=FIXTURES / CKPT, backend="torch")
    for predictor, task, needle in ((classifier, "detect", "is a classify model"),
                                    (detector, "classify", "is a detect model")):  # fmt: skip
        with pytest.raises(MobilenetsError, match=needle) as e:
            check_task(predictor, task)
        assert "\n" not in str(e.value)


# --- refusals ---------------------------------------------------------------------------------------


def test_classifier_checkpoint_refused_by_the_ssd_reader_and_the_reverse():
    with pytest.raises(WeightsError, match="TF-Slim MobileNet v1 classifier checkpoint, not an SSD detector") as e:
        read_ssd_checkpoint(FIXTURES / CKPT)
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="TF Object Detection API checkpoint") as e:
        read_slim_checkpoint(FIXTURES / SSD)
    assert "\n" not in str(e.value)
    assert read_weights(FIXTURES / CKPT).format == "slim-ckpt"  # still the classifier reader
    with pytest.raises(WeightsError, match="not a MobileNet v1 classifier/backbone but a ssd_mobilenet_v1") as e:
        build_model(read_weights(FIXTURES / SSD))  # the classifier builder, given a detector
    assert "\n" not in str(e.value)
    assert not is_ssd_checkpoint(open_checkpoint(FIXTURES / CKPT).entries)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.with_name(p.name + SHARD).write_bytes(p.with_name(p.name + SHARD).read_bytes()[:100_000]),
         "truncated checkpoint data"),
        (lambda p: flip_byte(p.with_name(p.name + SHARD), 150_000), "fails its CRC32C check"),
        (lambda p: p.with_name(p.name + ".index").write_bytes(p.with_name(p.name + ".index").read_bytes()[:-20]),
         "not a TensorFlow checkpoint index"),
        (lambda p: flip_byte(p.with_name(p.name + ".index"), 200), "corrupt checkpoint index"),
        (lambda p: p.with_name(p.name + SHARD).unlink(), "cannot read checkpoint data"),
    ],
    ids=["data-truncated", "data-bitflip", "index-truncated", "index-bitflip", "no-data"],
)  # fmt: skip
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage, needle):
    prefix = copy_ckpt(tmp_path)
    damage(prefix)
    with pytest.raises(WeightsError, match=needle) as err:
        read_weights(prefix)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({f"{FE}__Conv2d_7_pointwise__BatchNorm__beta": None}, f"missing from the checkpoint: {FE}/Conv2d_7_pointwise/"),
        ({"BoxPredictor_5__ClassPredictor__biases": None}, "missing from the checkpoint: BoxPredictor_5/ClassPredictor/biases"),
        ({f"{FE}__Conv2d_13_pointwise_2_Conv2d_2_3x3_s2_32__weights":
          f"{FE}/Conv2d_13_pointwise_2_Conv2d_2_3x3_s2_32_depthwise/depthwise_weights"}, "another variant"),
        ({"BoxPredictor_0__BoxEncodingPredictor__weights": (1, 1, 32, 24),
          "BoxPredictor_0__ClassPredictor__weights": (1, 1, 32, 24)}, "[6, 6, 6, 6, 6, 6] anchors per location"),
        ({"BoxPredictor_2__ClassPredictor__weights": (1, 1, 32, 30)}, "disagree on classes"),
        ({f"{FE}__Conv2d_13_pointwise__weights": (1, 1, 64, 96)}, "fit no MobileNet v1 width multiplier"),
        ({"BoxPredictor_1__BoxEncodingPredictor__weights": (1, 1, 60, 24)}, "needs [24, 64, 1, 1]"),
    ],
    ids=["no-beta", "no-bias", "depthwise-extras", "anchors", "classes", "width", "shape"],
)  # fmt: skip
def test_checkpoint_of_another_network_is_one_line(changes, needle):
    with pytest.raises(WeightsError) as e:
        read_ssd_checkpoint(edited(**changes))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith(str(FIXTURES / SSD))


def test_other_od_api_networks_are_named():
    ckpt = open_checkpoint(FIXTURES / SSD)
    v2 = {k.replace("MobilenetV1", "MobilenetV2"): e for k, e in ckpt.entries.items()}
    fpn = {k.replace("BoxPredictor_", "WeightSharedConvolutionalBoxPredictor_"): e for k, e in ckpt.entries.items()}
    for entries, needle in ((v2, "another backbone (FeatureExtractor/MobilenetV2)"),
                            (fpn, "without BoxPredictor_k/ (has WeightSharedConvolutionalBoxPredictor_0")):  # fmt: skip
        with pytest.raises(WeightsError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
            read_ssd_checkpoint(Checkpoint(ckpt.prefix, ckpt.index, ckpt.num_shards, entries))
        assert "\n" not in str(e.value)
        assert is_od_api_checkpoint(entries) and not is_ssd_checkpoint(entries)  # read_weights sends them here
    assert not is_od_api_checkpoint(open_checkpoint(FIXTURES / CKPT).entries)
