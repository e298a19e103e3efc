"""Training and fine-tuning: one engine (`train`), recipes as data, DDP under torchrun.

from mobilenets.train import TrainConfig, get_recipe, train
cfg = TrainConfig(data="hymenoptera", output="runs/a", recipe=get_recipe("finetune"),
                  alpha=0.75, resolution=192, weights="mobilenet_v1_0.75_192_quant.tflite")
summary = train(cfg)          # {"val_top1", "epochs", "seconds", "weights", ...}
"""

from .engine import TrainConfig, evaluate_weights, train
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "TrainConfig", "evaluate_weights", "get_recipe", "train"]
