"""Training building blocks: TF1 train augmentation, TF RMSProp, schedules, EMA, recipes, sampler, SyncBN."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data.augment import TrainTransform, adjust_saturation
from mobilenets.data.datasets import LabelledImages
from mobilenets.errors import ConfigError
from mobilenets.models.registry import mobilenet_v1
from mobilenets.train import RunError, platform
from mobilenets.train.checkpoint import merge_resume_config
from mobilenets.train.config import TrainConfig, make_config
from mobilenets.train.distributed import DistInfo, ResumableSampler
from mobilenets.train.engine import step_seed
from mobilenets.train.model import build_train_model, set_train_mode
from mobilenets.train.optim import LRSchedule, ModelEma, RMSpropTF, param_groups
from mobilenets.train.platform import resolve_amp
from mobilenets.train.recipes import RECIPES, get_recipe, parse_override

# --- augmentation ----------------------------------------------------------------------------


def test_crop_box_follows_tf_distribution():
    t = TrainTransform(resolution=32)
    rng = np.random.default_rng(0)
    h, w = 300, 400
    boxes = [t.crop_box(h, w, rng) for _ in range(500)]
    areas = np.array([bh * bw / (h * w) for _, _, bh, bw in boxes])
    aspects = np.array([bw / bh for _, _, bh, bw in boxes])
    assert all(0 <= top and 0 <= left and top + bh <= h and left + bw <= w for top, left, bh, bw in boxes)
    # min_object_covered 0.1 makes the effective area range [0.1, 1]; aspect 3/4..4/3 up to rounding
    assert areas.min() >= 0.1 - 1e-9 and areas.max() <= 1.0
    assert aspects.min() > 0.74 and aspects.max() < 1.35
    assert areas.min() < 0.2 and areas.max() > 0.9  # the whole range is used
    assert len({b for b in boxes}) > 400


def test_crop_box_falls_back_to_whole_image():
    # a 1000x10 strip cannot hold a 3/4..4/3 box of >= 10% area: TF returns the whole image
    t = TrainTransform()
    assert t.crop_box(1000, 10, np.random.default_rng(0)) == (0, 0, 1000, 10)


def test_train_transform_is_deterministic_per_seed_and_in_range():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    t = TrainTransform(resolution=48)
    a = t(img, np.random.default_rng([3, 1, 7]))
    b = t(img, np.random.default_rng([3, 1, 7]))
    c = t(img, np.random.default_rng([3, 2, 7]))
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_train_transform_without_distortions_is_resize_of_whole_image():
    from mobilenets.data.transforms import U8_SCALE, tf1_resize_bilinear

    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    t = TrainTransform(resolution=24, area_range=(1.0, 1.0), aspect_range=(1.25, 1.25), min_object_covered=1.0,
                       flip=False, brightness=0.0, saturation=(1.0, 1.0))  # fmt: skip
    out = t(img, np.random.default_rng(0))
    ref = tf1_resize_bilinear(np.asarray(img).astype(np.float32) * U8_SCALE, 24, 24)
    np.testing.assert_allclose(out.numpy(), ((ref - 0.5) * 2).transpose(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.4, 3.0])
def test_adjust_saturation_matches_hsv_round_trip(factor):
    rgb = np.random.default_rng(4).random((6, 7, 3)).astype(np.float32)
    rgb[0, 0] = (0.3, 0.3, 0.3)  # grey: saturation 0 stays 0
    rgb[0, 1] = (0.0, 0.0, 0.0)
    ref = np.empty_like(rgb)
    for idx in np.ndindex(rgb.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*rgb[idx])
        ref[idx] = colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)
    np.testing.assert_allclose(adjust_saturation(rgb, np.float32(factor)), ref, atol=2e-6)


# --- optimiser, schedule, EMA ----------------------------------------------------------------


def test_rmsprop_tf_is_tf1_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    p0 = p.detach().clone()
    opt = RMSpropTF([p], lr=0.1, rho=0.9, momentum=0.9, eps=1.0, weight_decay=0.01)
    grads = [torch.randn(5), torch.randn(5)]
    ms, mom, ref = torch.ones(5), torch.zeros(5), p0.clone()
    for lr, g in zip((0.1, 0.05), grads):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = g.clone()
        opt.step()
        g = g + 0.01 * ref  # L2 weight decay enters the gradient, as slim's regulariser loss does
        ms = 0.9 * ms + 0.1 * g * g  # mean square starts at 1 in TF
        mom = 0.9 * mom + lr * g / torch.sqrt(ms + 1.0)  # eps inside the root, lr inside the momentum
        ref = ref - mom
    torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-6)
    # and it is not PyTorch's RMSprop (which would differ by a lot with eps = 1)
    q = torch.nn.Parameter(p0.clone())
    torch_opt = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9)
    q.grad = grads[0].clone()
    torch_opt.step()
    assert (q.detach() - p.detach()).abs().max() > 1e-3


def test_lr_schedules():
    exp = LRSchedule("exponential", total_steps=100, decay_steps=15, decay_rate=0.94)
    assert [exp(s) for s in (0, 14, 15, 29, 30)] == [1.0, 1.0, 0.94, 0.94, pytest.approx(0.94**2)]
    cos = LRSchedule("cosine", total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert all(cos(s) >= cos(s + 1) for s in range(10, 110))


def test_ema_uses_tf_num_updates_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.999, 1/10) = 0.1 -> 0.9
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.9, 0.9])
    ema.update(model)  # decay 2/11
    assert ema.module.weight[0, 0].item() == pytest.approx(0.9 * 2 / 11 + (1 - 2 / 11))
    assert int(ema.num_updates) == 2 and not ema.module.weight.requires_grad


# --- recipes ---------------------------------------------------------------------------------


def test_slim_recipe_is_train_image_classifier_defaults():
    r = get_recipe("slim")
    assert (r.optimizer, r.rmsprop_decay, r.momentum, r.eps) == ("rmsprop_tf", 0.9, 0.9, 1.0)
    assert (r.lr, r.lr_batch, r.scaled_lr(64)) == (0.01, 32, 0.02)
    assert (r.schedule, r.decay_rate, r.decay_epochs) == ("exponential", 0.94, 2.0)
    assert (r.weight_decay, r.decay_depthwise, r.bn_decay, r.label_smoothing, r.ema_decay) == (
        4e-5,
        False,
        0.9997,
        0.0,
        0.0,
    )
    assert r.bn_mode == "train" and not r.train_bn_gamma and r.dropout == 0.001
    assert r.area_range == (0.05, 1.0) and r.aspect_range == (0.75, 4 / 3) and r.flip


def test_recipes_validate_and_override():
    for r in RECIPES.values():
        r.validate()
        assert type(r).from_dict(r.as_dict()) == r
    assert parse_override("label_smoothing=0.2") == ("label_smoothing", 0.2)
    assert parse_override("area-range=0.3,1") == ("area_range", (0.3, 1.0))
    assert parse_override("flip=false") == ("flip", False)
    assert parse_override("epochs=3") == ("epochs", 3)
    with pytest.raises(ConfigError, match="recipe field"):
        parse_override("nonsense=1")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_override("epochs=many")
    with pytest.raises(ConfigError, match="label_smoothing"):
        get_recipe("slim").with_overrides(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("nope")


def test_param_groups_follow_slim_regularisation():
    cfg = TrainConfig(data="", output="", recipe=get_recipe("slim"), alpha=0.25, resolution=64)
    model = build_train_model(cfg, LabelledImages([], ["a", "b", "c"]))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, cfg.recipe, 0.01)
    decayed = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
    trained = {names[id(p)] for g in groups for p in g["params"]}
    assert "features.Conv2d_0.conv.weight" in decayed and "features.Conv2d_1_pointwise.conv.weight" in decayed
    assert "classifier.weight" in decayed and "classifier.bias" not in decayed
    assert not any("_depthwise" in n or ".bn." in n for n in decayed)
    assert not any(n.endswith("bn.weight") for n in trained)  # slim has no BN gamma
    assert all(m.momentum == pytest.approx(3e-4) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    ft = TrainConfig(data="", output="", recipe=get_recipe("finetune").with_overrides(freeze_backbone=True),
                     alpha=0.25, resolution=64)  # fmt: skip
    groups = param_groups(build_train_model(ft, LabelledImages([], ["a", "b"])), ft.recipe, 0.01)
    assert [len(g["params"]) for g in groups] == [1, 1]  # head bias + head weight only
    assert {g["lr"] for g in groups} == {0.01}


def test_step_seeds_differ():
    seeds = {step_seed(s, step, r) for s in range(3) for step in range(50) for r in range(4)}
    assert len(seeds) == 600 and all(0 <= x < 2**63 for x in seeds)


# --- sampler ---------------------------------------------------------------------------------


def test_sampler_shards_like_one_process_and_resumes():
    n, global_batch, seed = 23, 6, 5
    single = ResumableSampler(n, global_batch, DistInfo(), seed)
    single.set_epoch(2)
    one = list(single)
    assert len(one) == len(single) == 18 and len({i for i, _ in one}) == 18 and {e for _, e in one} == {2}
    ranks = [ResumableSampler(n, global_batch, DistInfo(rank=r, world_size=2), seed) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    for k in range(3):  # the union of the ranks' k-th batches is the single process's k-th batch
        assert sorted(shards[0][3 * k : 3 * k + 3] + shards[1][3 * k : 3 * k + 3]) == sorted(one[6 * k : 6 * k + 6])
    single.set_epoch(2, start_batch=2)
    assert list(single) == one[12:] and len(single) == 6
    single.set_epoch(3)
    assert [i for i, _ in single] != [i for i, _ in one]


# --- model setup ------------------------------------------------------------------------------


def test_frozen_bn_keeps_statistics():
    model = mobilenet_v1(alpha=0.25, resolution=64, num_classes=2)
    recipe = get_recipe("finetune")
    set_train_mode(model, recipe)
    before = model.features.Conv2d_0.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.features.Conv2d_0.bn.running_mean, before)
    assert model.training and model.dropout.training and not model.features.Conv2d_0.bn.training
    set_train_mode(model, get_recipe("slim"))
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(model.features.Conv2d_0.bn.running_mean, before)
    assert not math.isnan(float(model.features.Conv2d_0.bn.running_var.sum()))


def test_auto_amp_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(platform, "native_cpu_bf16", lambda: True)
    assert resolve_amp("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(platform, "native_cpu_bf16", lambda: False)  # AVX2: bf16 measured 12x slower
    assert resolve_amp("auto", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16 and resolve_amp("off", cpu) is None


def test_keep_freed_memory_calls_mallopt_once(monkeypatch):
    calls = []
    monkeypatch.setattr(platform, "_heap_reuse", None)
    monkeypatch.setattr(platform, "_mallopt_keep", lambda: calls.append(1) or True)
    assert not platform.heap_reuse_applied()
    assert platform.keep_freed_memory() and platform.keep_freed_memory() and calls == [1]
    assert platform.heap_reuse_applied()


# --- configuration and resume rules ------------------------------------------------------------


def test_make_config_sorts_settings_and_refuses_unknown_ones():
    cfg = make_config("d", "o", 0.5, 160, recipe="finetune", epochs=3, workers=0, freeze_backbone=False, seed=7)
    assert (cfg.recipe.name, cfg.recipe.epochs, cfg.recipe.freeze_backbone) == ("finetune", 3, False)
    assert (cfg.workers, cfg.seed, cfg.model_name, cfg.weights) == (0, 7, "mobilenet_v1_0.5_160", None)
    assert cfg.recipe == get_recipe("finetune").with_overrides(epochs=3, freeze_backbone=False)
    with pytest.raises(ConfigError, match="unknown training setting.*epoch$|unknown training setting.*epoch;"):
        make_config("d", "o", 0.5, 160, epoch=3)


def test_merge_resume_config_allows_only_resumable_changes():
    saved = make_config("d", "o", 0.25, 64, epochs=2, batch_size=4, workers=2)
    cfg = merge_resume_config(saved, {"epochs": 5, "workers": 0, "data": "e", "batch_size": 4, "alpha": 0.25})
    assert (cfg.recipe.epochs, cfg.workers, cfg.data, cfg.recipe.batch_size) == (5, 0, "e", 4)
    assert cfg.recipe == saved.recipe.with_overrides(epochs=5) and saved.recipe.epochs == 2  # saved unchanged
    with pytest.raises(RunError, match=r"^resume o: batch_size, seed differ from the run being resumed"):
        merge_resume_config(saved, {"batch_size": 8, "seed": 1, "epochs": 3})
    with pytest.raises(RunError, match="unknown setting.*output"):
        merge_resume_config(saved, {"output": "elsewhere"})
