"""Training and fine-tuning: one loop, recipes as data, exact resume, DDP under torchrun.

from mobilenets.train import finetune, resume
summary = finetune("hymenoptera", "mobilenet_v1_0.75_192_quant.tflite", "runs/a", epochs=8)
summary["best_top1"], summary["best_epoch"], summary["final"]["top1"]   # final: last.safetensors on val/
summary = resume("runs/a", epochs=12)     # continue (or extend) a run directory

Or a run from a `TrainConfig` (`make_config` sorts keyword settings into it):
cfg = TrainConfig(data="hymenoptera", output="runs/b", recipe=get_recipe("slim"), alpha=0.25, resolution=128)
summary = train(cfg)          # {"val_top1", "best_top1", "best_epoch", "epochs", "steps", "seconds", "weights", ...}

Modules, one concern each: `config` (TrainConfig), `recipes`, `data` (splits, augmentation,
loaders), `model` (train model, head init, train mode), `optim` (optimisers, schedule, EMA),
`platform` (AMP, native bf16, heap reuse), `checkpoint` (run directory, checkpoint format,
resume rules), `evaluation`, `engine` (the loop), `distributed`, `run` (these entry points), `segment` (DeepLab v3
segmentation training: `train_segmentation`, `finetune_segmentation`, `resume_segmentation`), `detect` (SSD
detection training: `train_detect`, `finetune_detect`, `resume_detect`).
"""

from .checkpoint import RESUMABLE_CHANGES, RunError
from .config import TrainConfig, finetune_config, make_config
from .detect import DetectConfig, finetune_detect, resume_detect, train_detect
from .evaluation import evaluate_run, evaluate_weights
from .recipes import RECIPES, Recipe, get_recipe
from .run import finetune, resume, train
from .segment import SegmentConfig, finetune_segmentation, resume_segmentation, train_segmentation

__all__ = [
    "RECIPES",
    "RESUMABLE_CHANGES",
    "DetectConfig",
    "Recipe",
    "RunError",
    "SegmentConfig",
    "TrainConfig",
    "evaluate_run",
    "evaluate_weights",
    "finetune",
    "finetune_config",
    "finetune_detect",
    "finetune_segmentation",
    "get_recipe",
    "make_config",
    "resume",
    "resume_detect",
    "resume_segmentation",
    "train",
    "train_detect",
    "train_segmentation",
]
