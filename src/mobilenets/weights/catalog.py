"""The official MobileNet v1 release, as data: names, download URLs, published metrics, preprocessing.

Sources (all Apache-2.0, tensorflow/models research/slim):
- ``SEED_2017``: the first release's table (2017-06-14 checkpoints), as quoted in the
  project brief: MACs (millions), params (millions), top-1, top-5 on ILSVRC-2012 val.
- ``RELEASE_2018``: ``research/slim/nets/mobilenet_v1.md`` for the 2018-02-22 tarballs
  (float and quantization-aware-trained ``_quant``), single centre crop.
- Keras Applications ``mobilenet_<a>_<res>_tf.h5`` (1000 classes, no background) as a
  fallback source for the float weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.registry import ALPHAS, RESOLUTIONS, model_name


@dataclass(frozen=True)
class Published:
    """One row of a published table (MACs and params in millions, accuracies in %)."""

    macs_m: float
    params_m: float
    top1: float
    top5: float

    def as_dict(self) -> dict[str, float]:
        return {"macs_m": self.macs_m, "params_m": self.params_m, "top1": self.top1, "top5": self.top5}


@dataclass(frozen=True)
class Preprocessing:
    """How the weights expect their input: the contract `EvalTransform` implements."""

    resolution: int
    crop_fraction: float = 0.875
    mean: float = 0.5  # (x - mean) / std on [0, 1] values: [-1, 1], TF 'inception' style
    std: float = 0.5
    interpolation: str = "tf1_bilinear"


@dataclass(frozen=True)
class WeightsEntry:
    """A published checkpoint and its contract."""

    name: str  # e.g. mobilenet_v1_0.75_192 or mobilenet_v1_0.75_192_quant
    arch: str  # registry name
    alpha: float
    resolution: int
    quantized: bool
    urls: tuple[str, ...]  # tried in order
    num_classes: int = 1001  # index 0 = background
    published: Published | None = None  # RELEASE_2018 row
    published_2017: Published | None = None  # seed table row (float only)
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing(224))
    recipe: str = "https://github.com/tensorflow/models/tree/master/research/slim (train_image_classifier.py, mobilenet_v1_train.py)"


# alpha -> (MACs per resolution 224/192/160/128, params, top-1 per res, top-5 per res)
_SEED_2017 = {
    1.0: ((569, 418, 291, 186), 4.24, (70.7, 69.3, 67.2, 64.1), (89.5, 88.9, 87.5, 85.3)),
    0.75: ((317, 233, 162, 104), 2.59, (68.4, 67.4, 65.2, 61.8), (88.2, 87.3, 86.1, 83.6)),
    0.5: ((150, 110, 77, 49), 1.34, (64.0, 62.1, 59.9, 56.2), (85.4, 84.0, 82.5, 79.6)),
    0.25: ((41, 34, 21, 14), 0.47, (50.6, 49.0, 46.0, 41.3), (75.0, 73.6, 70.7, 66.2)),
}
# mobilenet_v1.md (2018-02-22): float, then _quant. Same MACs/params as the seed table.
_RELEASE_2018_TOP = {
    1.0: ((70.9, 70.0, 68.0, 65.2), (89.9, 89.2, 87.7, 85.8), (69.7, 69.0, 67.3, 64.0), (89.5, 88.9, 87.7, 85.5)),
    0.75: ((68.4, 67.2, 65.3, 62.1), (88.2, 87.3, 86.0, 83.9), (67.9, 66.2, 63.9, 59.8), (88.1, 87.1, 85.5, 82.8)),
    0.5: ((63.3, 61.7, 59.1, 56.3), (84.9, 83.6, 81.9, 79.4), (62.2, 60.4, 57.7, 54.9), (84.5, 83.2, 81.3, 78.9)),
    0.25: ((49.8, 47.7, 45.5, 41.5), (74.2, 72.3, 70.3, 66.3), (48.2, 45.8, 43.5, 39.9), (73.8, 71.9, 69.1, 65.8)),
}

_TGZ_2018 = "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/{name}.tgz"
_TGZ_2017 = "http://download.tensorflow.org/models/mobilenet_v1_{alpha}_{res}_2017_06_14.tar.gz"
_KERAS_H5 = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_{a}_{res}_tf.h5"
_KERAS_ALPHA = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def keras_h5_url(alpha: float, resolution: int) -> str:
    return _KERAS_H5.format(a=_KERAS_ALPHA[alpha], res=resolution)


def _build() -> dict[str, WeightsEntry]:
    out: dict[str, WeightsEntry] = {}
    for alpha in ALPHAS:
        macs, params, t1, t5 = _SEED_2017[alpha]
        f1, f5, q1, q5 = _RELEASE_2018_TOP[alpha]
        for i, res in enumerate(RESOLUTIONS):
            arch = model_name(alpha, res)
            seed = Published(macs[i], params, t1[i], t5[i])
            pre = Preprocessing(res)
            out[arch] = WeightsEntry(
                name=arch, arch=arch, alpha=alpha, resolution=res, quantized=False,
                urls=(_TGZ_2018.format(name=arch), keras_h5_url(alpha, res)),
                published=Published(macs[i], params, f1[i], f5[i]), published_2017=seed, preprocessing=pre,
            )  # fmt: skip
            qname = f"{arch}_quant"
            out[qname] = WeightsEntry(
                name=qname, arch=arch, alpha=alpha, resolution=res, quantized=True,
                urls=(_TGZ_2018.format(name=qname),),
                published=Published(macs[i], params, q1[i], q5[i]), preprocessing=pre,
            )  # fmt: skip
    return out


CATALOG: dict[str, WeightsEntry] = _build()


def seed_table(arch: str) -> Published:
    """The 2017 seed table's row for a registered architecture name."""
    entry = CATALOG[arch]
    assert entry.published_2017 is not None
    return entry.published_2017
