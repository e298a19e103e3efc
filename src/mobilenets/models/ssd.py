"""SSD with a MobileNet v1 backbone, as the TF Object Detection API builds ``ssd_mobilenet_v1``.

Papers: Liu et al., "SSD: Single Shot MultiBox Detector", 2016, https://arxiv.org/abs/1512.02325;
Howard et al., "MobileNets", 2017, https://arxiv.org/abs/1704.04861 (the backbone).
Reference code: tensorflow/models, research/object_detection (``models/
ssd_mobilenet_v1_feature_extractor.py``, ``models/feature_map_generators.py``,
``anchor_generators/multiple_grid_anchor_generator.py``, ``box_coders/
faster_rcnn_box_coder.py``) and TFLite's ``kernels/detection_postprocess.cc``.
Weights: Google's ``coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite`` (`weights.ssd_tflite`).

Four separate pieces, one job each (torchvision's split, TF's arithmetic):

- `SSDMobileNetV1`: backbone + extra feature layers + one box/class predictor per map,
  described by the tables ``SSD_FEATURE_MAPS`` and ``SSD_PREDICTOR_KERNEL``;
- `AnchorGenerator`: TF's multiple-grid anchors, generated from their definition;
- `BoxCoder`: the Faster R-CNN box coder with scales (10, 10, 5, 5);
- `PostProcess`: ``TFLite_Detection_PostProcess`` (fast class-agnostic NMS, or regular
  per-class NMS), batched, in PyTorch.

Conventions (those of Google's file): boxes are ``(ymin, xmin, ymax, xmax)`` normalised to
[0, 1]; the head predicts 91 classes with index 0 'background' and index ``k`` = COCO id
``k``; reported classes are ``index - 1`` (COCO id - 1) as floats; scores are sigmoids.

Names mirror the TF OD API variable scopes so TF1 detection-zoo checkpoints map one to one
(``TF_OD_NAME_RULES``, `tf_od_name`)::

    backbone.features.Conv2d_3_pointwise.conv.weight    FeatureExtractor/MobilenetV1/Conv2d_3_pointwise/weights
    backbone.features.Conv2d_3_depthwise.conv.weight    FeatureExtractor/MobilenetV1/Conv2d_3_depthwise/depthwise_weights
    backbone.features.<scope>.bn.bias                   FeatureExtractor/MobilenetV1/<scope>/BatchNorm/beta
    extras.Conv2d_13_pointwise_1_Conv2d_2_1x1_256.conv.weight
                                                        FeatureExtractor/MobilenetV1/Conv2d_13_pointwise_1_Conv2d_2_1x1_256/weights
    box_predictors.BoxPredictor_0.BoxEncodingPredictor.weight   BoxPredictor_0/BoxEncodingPredictor/weights
    box_predictors.BoxPredictor_0.ClassPredictor.bias           BoxPredictor_0/ClassPredictor/biases

(BN: ``bn.weight/bias/running_mean/running_var`` -> ``BatchNorm/gamma/beta/moving_mean/
moving_variance``.) The extra layers' scope names contain their depth, as in TF, so they
depend on the width multiplier.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from .cfg import OutputSpec, PretrainedCfg
from .layers import ConvBnAct, Padding, make_conv
from .mobilenet_v1 import SLIM_NAME_RULES, MobileNetV1

SSD_MIN_DEPTH = 16  # ssd_mobilenet_v1 configs: min_depth 16 for backbone and extra layers
SSD_RESOLUTION = 300
COCO_NUM_CLASSES = 91  # 90 COCO ids + background at index 0
PREDICTOR_INIT_STD = 0.03  # OD API conv_hyperparams: truncated_normal_initializer(stddev=0.03)


class FeatureMapDef(NamedTuple):
    """One SSD feature map: a backbone endpoint (``from_layer``), or a new layer (``depth``).

    A new layer is TF's ``multi_resolution_feature_maps`` block on the previous map: a 1x1
    conv to ``depth // 2`` then a ``kernel`` x ``kernel`` stride-2 'SAME' conv to ``depth``
    (both conv -> BN -> ReLU6; depths scaled by the width multiplier, floor ``min_depth``).
    """

    from_layer: str
    depth: int = -1
    kernel: int = 3
    stride: int = 2


# TF OD API ssd_mobilenet_v1 feature_map_layout: from_layer / layer_depth.
SSD_FEATURE_MAPS: tuple[FeatureMapDef, ...] = (
    FeatureMapDef("Conv2d_11_pointwise"),
    FeatureMapDef("Conv2d_13_pointwise"),
    FeatureMapDef("", 512),
    FeatureMapDef("", 256),
    FeatureMapDef("", 256),
    FeatureMapDef("", 128),
)
SSD_PREDICTOR_KERNEL = 1  # convolutional_box_predictor kernel_size 1, no layers before it


def ssd_depth(depth: int, alpha: float, min_depth: int = SSD_MIN_DEPTH) -> int:
    """The OD API's ``depth_fn``: ``max(int(depth * alpha), min_depth)``."""
    return max(int(depth * alpha), min_depth)


# --- anchors ---------------------------------------------------------------------------------


class AnchorGenerator:
    """TF's ``create_ssd_anchors`` / ``MultipleGridAnchorGenerator`` (no clipping).

    Layer ``i`` of ``num_layers`` has scale ``min + (max - min) * i / (num_layers - 1)``;
    it gets one box per aspect ratio plus one of scale ``sqrt(s_i * s_{i+1})`` (``s_num_layers
    = 1``) at ``interpolated_scale_aspect_ratio``; with ``reduce_boxes_in_lowest_layer`` the
    first layer has just ``(0.1, 1), (s_0, 2), (s_0, 0.5)``. A box of scale ``s`` and
    aspect ``a`` is ``s / sqrt(a)`` high and ``s * sqrt(a)`` wide (times ``base_anchor_size``,
    and times ``min(H, W) / H`` resp. ``/ W`` for a non-square image). Centres are at
    ``(i + 0.5) / grid`` along each axis.

    Order (the predictors' reshape relies on it): feature map, then row, then column, then
    box. Anchors are ``(ycenter, xcenter, h, w)``, normalised, as ``TFLite_Detection_PostProcess``
    takes them.
    """

    def __init__(
        self,
        num_layers: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
        interpolated_scale_aspect_ratio: float = 1.0,
        reduce_boxes_in_lowest_layer: bool = True,
        base_anchor_size: tuple[float, float] = (1.0, 1.0),
        scales: Sequence[float] | None = None,
    ) -> None:
        if scales:
            scales = [float(s) for s in scales]
        else:
            scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)]
        if len(scales) != num_layers:
            raise ConfigError(f"got {len(scales)} anchor scales for {num_layers} layers")
        scales = scales + [1.0]  # only used for the interpolated scale of the last layer
        self.box_specs: list[list[tuple[float, float]]] = []
        for layer, (scale, scale_next) in enumerate(itertools.pairwise(scales)):
            if layer == 0 and reduce_boxes_in_lowest_layer:
                specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
            else:
                specs = [(scale, float(a)) for a in aspect_ratios]
                if interpolated_scale_aspect_ratio > 0.0:
                    specs.append((math.sqrt(scale * scale_next), interpolated_scale_aspect_ratio))
            self.box_specs.append(specs)
        self.base_anchor_size = base_anchor_size

    @property
    def num_layers(self) -> int:
        return len(self.box_specs)

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) for s in self.box_specs]

    def generate(self, grid_sizes: Sequence[tuple[int, int]], im_height: int = 1, im_width: int = 1,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:  # fmt: skip
        """A x 4 anchors ``(ycenter, xcenter, h, w)`` for feature maps of ``grid_sizes`` (H, W)."""
        if len(grid_sizes) != self.num_layers:
            raise ConfigError(f"anchor generator has {self.num_layers} layers, got {len(grid_sizes)} feature maps")
        min_side = min(im_height, im_width)
        base_h = self.base_anchor_size[0] * min_side / im_height
        base_w = self.base_anchor_size[1] * min_side / im_width
        out = []
        for (gh, gw), specs in zip(grid_sizes, self.box_specs):
            scales = torch.tensor([s for s, _ in specs], dtype=torch.float64)
            ratios = torch.tensor([a for _, a in specs], dtype=torch.float64).sqrt()
            heights = scales / ratios * base_h
            widths = scales * ratios * base_w
            yc = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh  # i * stride + stride / 2
            xc = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
            b = len(specs)
            grid = torch.stack(
                [
                    yc.view(gh, 1, 1).expand(gh, gw, b),
                    xc.view(1, gw, 1).expand(gh, gw, b),
                    heights.view(1, 1, b).expand(gh, gw, b),
                    widths.view(1, 1, b).expand(gh, gw, b),
                ],
                dim=-1,
            )
            out.append(grid.reshape(-1, 4))
        return torch.cat(out).to(dtype=dtype, device=device)


def center_size_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(yc, xc, h, w)`` -> ``(ymin, xmin, ymax, xmax)`` along the last axis."""
    yc, xc, h, w = boxes.unbind(-1)
    return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], dim=-1)


def corners_to_center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``(ymin, xmin, ymax, xmax)`` -> ``(yc, xc, h, w)`` along the last axis."""
    ymin, xmin, ymax, xmax = boxes.unbind(-1)
    return torch.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], dim=-1)


# --- box coder -------------------------------------------------------------------------------


class BoxCoder:
    """TF's ``FasterRcnnBoxCoder``: codes ``(ty, tx, th, tw)`` relative to an anchor.

    ``ty = (yc - yc_a) / h_a * sy``, ``tx = (xc - xc_a) / w_a * sx``, ``th = log(h / h_a) * sh``,
    ``tw = log(w / w_a) * sw`` with scales ``(sy, sx, sh, sw) = (10, 10, 5, 5)``. Anchors are
    center-size ``(yc, xc, h, w)``; boxes are corners ``(ymin, xmin, ymax, xmax)``.
    """

    EPSILON = 1e-8  # TF adds it to every size before dividing / taking logs (encode only)

    def __init__(self, scales: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        if len(scales) != 4 or any(s <= 0 for s in scales):
            raise ConfigError(f"box coder needs four positive scales (y, x, h, w), got {tuple(scales)}")
        self.scales = tuple(float(s) for s in scales)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Corner boxes [..., A, 4] -> codes [..., A, 4] against center-size anchors [A, 4]."""
        yca, xca, ha, wa = anchors.unbind(-1)
        yc, xc, h, w = corners_to_center_size(boxes).unbind(-1)
        ha, wa, h, w = ha + self.EPSILON, wa + self.EPSILON, h + self.EPSILON, w + self.EPSILON
        sy, sx, sh, sw = self.scales
        return torch.stack([(yc - yca) / ha * sy, (xc - xca) / wa * sx,
                            torch.log(h / ha) * sh, torch.log(w / wa) * sw], dim=-1)  # fmt: skip

    def decode(self, codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Codes [..., A, 4] -> corner boxes [..., A, 4]; TFLite's ``DecodeCenterSizeBoxes``."""
        yca, xca, ha, wa = anchors.unbind(-1)
        ty, tx, th, tw = codes.unbind(-1)
        sy, sx, sh, sw = self.scales
        yc = ty / sy * ha + yca
        xc = tx / sx * wa + xca
        half_h = 0.5 * torch.exp(th / sh) * ha
        half_w = 0.5 * torch.exp(tw / sw) * wa
        return torch.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], dim=-1)


# --- post-processing -------------------------------------------------------------------------


def box_iou_one_to_many(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of ``box`` [B, 4] with ``boxes`` [B, A, 4] -> [B, A], as TFLite computes it.

    A box of area <= 0 has IoU 0 with everything (TFLite's rule).
    """
    box = box.unsqueeze(1)
    area_i = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    area_j = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    ih = (torch.minimum(box[..., 2], boxes[..., 2]) - torch.maximum(box[..., 0], boxes[..., 0])).clamp_min(0)
    iw = (torch.minimum(box[..., 3], boxes[..., 3]) - torch.maximum(box[..., 1], boxes[..., 1])).clamp_min(0)
    inter = ih * iw
    iou = inter / (area_i + area_j - inter)
    return torch.where((area_i > 0) & (area_j > 0), iou, torch.zeros_like(iou))


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float,
               max_output: int, early_exit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """TFLite's ``NonMaxSuppressionSingleClassHelper``, batched over the first axis.

    ``boxes`` [B, A, 4] corners, ``scores`` [B, A]. Candidates have ``score >= score_threshold``;
    the best remaining one is taken (ties: lowest index, as TFLite's stable sort) and every
    candidate with IoU ``> iou_threshold`` to it is dropped, until ``max_output`` are taken.
    Returns ``(indices [B, max_output], valid [B, max_output])``. ``early_exit=False`` always
    runs ``max_output`` rounds (same result, no data-dependent branch: what an exporter traces).
    """
    b = scores.shape[0]
    active = scores >= score_threshold
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    rows = torch.arange(b, device=scores.device)
    indices = torch.zeros(b, max_output, dtype=torch.long, device=scores.device)
    valid = torch.zeros(b, max_output, dtype=torch.bool, device=scores.device)
    for t in range(max_output):
        alive = active.any(dim=1)
        if early_exit and not bool(alive.any()):
            break
        best = torch.where(active, scores, neg_inf).argmax(dim=1)  # first maximum
        indices[:, t] = best
        valid[:, t] = alive
        iou = box_iou_one_to_many(boxes[rows, best], boxes)
        active = active & ~(iou > iou_threshold)
        active[rows, best] = False
    return indices, valid


class PostProcess(nn.Module):
    """``TFLite_Detection_PostProcess`` after box decoding, batched.

    Args:
        num_classes: real classes (90 for COCO); a score column beyond them (the first) is
            background and never reported.
        max_detections: detections kept per image (K).
        max_classes_per_detection: fast NMS only; classes reported per kept anchor (the
            output then has ``max_detections * max_classes_per_detection`` rows).
        nms_iou_threshold: a candidate whose IoU with a kept box is greater is dropped.
        nms_score_threshold: candidates need ``score >= threshold``.
        use_regular_nms: False: fast NMS (each anchor competes with its best class score,
            class-agnostic), as Google's file does; True: NMS per class, then the best
            ``max_detections`` over all classes.
        detections_per_class: regular NMS only; boxes kept per class before merging.

    ``forward(boxes [N, A, 4] corners, scores [N, A, C(+1)])`` returns a dict ``boxes``
    [N, K, 4], ``classes`` [N, K] (0-based, background excluded; float like the file),
    ``scores`` [N, K] and ``count`` [N] (float); rows beyond ``count`` are zero.
    """

    def __init__(self, num_classes: int = 90, max_detections: int = 10, max_classes_per_detection: int = 1,
                 nms_iou_threshold: float = 0.6, nms_score_threshold: float = 1e-8, use_regular_nms: bool = False,
                 detections_per_class: int = 100) -> None:  # fmt: skip
        super().__init__()
        if not 0.0 < nms_iou_threshold <= 1.0:
            raise ConfigError(f"nms_iou_threshold must be in (0, 1], got {nms_iou_threshold}")
        if max_detections < 0 or max_classes_per_detection < 1 or detections_per_class < 1:
            raise ConfigError(
                "max_detections >= 0, max_classes_per_detection >= 1 and detections_per_class >= 1 needed"
            )
        self.num_classes = num_classes
        self.max_detections = max_detections
        self.max_classes_per_detection = max_classes_per_detection
        self.nms_iou_threshold = nms_iou_threshold
        self.nms_score_threshold = nms_score_threshold
        self.use_regular_nms = use_regular_nms
        self.detections_per_class = detections_per_class
        self.traceable = False  # True: NMS without data-dependent branches (for the ONNX exporter)

    @property
    def detections_per_image(self) -> int:
        """K, the number of rows of every output."""
        if self.use_regular_nms:
            return self.max_detections
        return self.max_detections * min(self.max_classes_per_detection, self.num_classes)

    @classmethod
    def from_tflite_options(cls, options: dict) -> PostProcess:
        """From the op's flexbuffer ``custom_options`` (TFLite's defaults where a key is absent)."""
        return cls(
            num_classes=int(options["num_classes"]),
            max_detections=int(options["max_detections"]),
            max_classes_per_detection=int(options["max_classes_per_detection"]),
            nms_iou_threshold=float(options["nms_iou_threshold"]),
            nms_score_threshold=float(options["nms_score_threshold"]),
            use_regular_nms=bool(options.get("use_regular_nms", False)),
            detections_per_class=int(options.get("detections_per_class", 100)),
        )

    def extra_repr(self) -> str:
        nms = f"regular, {self.detections_per_class} per class" if self.use_regular_nms else "fast"
        return (f"num_classes={self.num_classes}, max_detections={self.max_detections}, nms={nms}, "
                f"iou>{self.nms_iou_threshold:g}, score>={self.nms_score_threshold:g}")  # fmt: skip

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        offset = scores.shape[-1] - self.num_classes
        if offset not in (0, 1):
            raise ConfigError(f"scores have {scores.shape[-1]} columns for {self.num_classes} classes (+1 background)")
        scores = scores[..., offset:]
        if self.use_regular_nms:
            return self._regular(boxes, scores)
        return self._fast(boxes, scores)

    def _fast(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        n = scores.shape[0]
        k_cls = min(self.max_classes_per_detection, self.num_classes)
        if k_cls == 1:
            top_scores, top_classes = scores.max(dim=-1, keepdim=True)  # first maximum, like ArgMaxVector
        else:
            top_scores, top_classes = scores.topk(k_cls, dim=-1)
        idx, valid = greedy_nms(boxes, top_scores[..., 0], self.nms_iou_threshold, self.nms_score_threshold,
                                self.max_detections, early_exit=not self.traceable)  # fmt: skip
        rows = torch.arange(n, device=scores.device).unsqueeze(1)
        sel_boxes = boxes[rows, idx].unsqueeze(2).expand(-1, -1, k_cls, -1).reshape(n, -1, 4)
        sel_classes = top_classes[rows, idx].reshape(n, -1).to(scores.dtype)
        sel_scores = top_scores[rows, idx].reshape(n, -1)
        mask = valid.unsqueeze(2).expand(-1, -1, k_cls).reshape(n, -1)
        return self._pack(sel_boxes, sel_classes, sel_scores, mask, valid.sum(dim=1))

    def _regular(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        n, a, c = scores.shape
        per_class = scores.permute(0, 2, 1).reshape(n * c, a)
        class_boxes = boxes.unsqueeze(1).expand(n, c, a, 4).reshape(n * c, a, 4)
        d = min(self.detections_per_class, a)
        idx, valid = greedy_nms(class_boxes, per_class, self.nms_iou_threshold, self.nms_score_threshold, d)
        cand_scores = per_class.gather(1, idx).masked_fill(~valid, float("-inf")).view(n, c * d)
        cand_anchor = idx.view(n, c * d)
        cand_class = torch.arange(c, device=scores.device).repeat_interleave(d).expand(n, -1)
        # Class-major candidates, stable sort: ties go to the lower class, then the earlier pick.
        order = cand_scores.sort(dim=1, descending=True, stable=True).indices[:, : self.max_detections]
        k = order.shape[1]
        top_scores = cand_scores.gather(1, order)
        mask = torch.isfinite(top_scores)
        rows = torch.arange(n, device=scores.device).unsqueeze(1)
        sel_boxes = boxes[rows, cand_anchor.gather(1, order)]
        sel_classes = cand_class.gather(1, order).to(scores.dtype)
        out = self._pack(sel_boxes, sel_classes, top_scores.masked_fill(~mask, 0.0), mask, mask.sum(dim=1))
        if k < self.max_detections:  # fewer candidates than rows: pad like TFLite (zeros)
            pad = self.max_detections - k
            out["boxes"] = torch.cat([out["boxes"], out["boxes"].new_zeros(n, pad, 4)], dim=1)
            for key in ("classes", "scores"):
                out[key] = torch.cat([out[key], out[key].new_zeros(n, pad)], dim=1)
        return out

    @staticmethod
    def _pack(boxes, classes, scores, mask, count) -> dict[str, torch.Tensor]:
        m = mask.to(scores.dtype)
        return {"boxes": boxes * m.unsqueeze(-1), "classes": classes * m, "scores": scores * m,
                "count": count.to(scores.dtype)}  # fmt: skip


# --- the model -------------------------------------------------------------------------------


class BoxPredictor(nn.Module):
    """One feature map's head: ``BoxPredictor_i/{BoxEncodingPredictor, ClassPredictor}``.

    Two plain convs with bias (no BN, no activation), ``A * 4`` and ``A * num_classes`` outputs.
    """

    def __init__(self, in_ch: int, num_anchors: int, num_classes: int, kernel: int = SSD_PREDICTOR_KERNEL,
                 padding: Padding = "same") -> None:  # fmt: skip
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.BoxEncodingPredictor = make_conv(in_ch, num_anchors * 4, kernel, bias=True, padding=padding)
        self.ClassPredictor = make_conv(in_ch, num_anchors * num_classes, kernel, bias=True, padding=padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        # NCHW -> NHWC then reshape: anchor order row, column, box (TF's [N, H*W*A, 4]).
        box = self.BoxEncodingPredictor(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        cls = self.ClassPredictor(x).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        return box, cls


def extra_layer_names(alpha: float, min_depth: int = SSD_MIN_DEPTH,
                      feature_maps: Sequence[FeatureMapDef] = SSD_FEATURE_MAPS) -> list[tuple[str, str]]:  # fmt: skip
    """TF scope names ``(1x1 layer, strided layer)`` of each new feature map, in order."""
    base, names = "", []
    for index, fm in enumerate(feature_maps):
        if fm.from_layer:
            base = fm.from_layer
            continue
        d = ssd_depth(fm.depth, alpha, min_depth)
        half = ssd_depth(fm.depth // 2, alpha, min_depth)
        names.append(
            (f"{base}_1_Conv2d_{index}_1x1_{half}", f"{base}_2_Conv2d_{index}_{fm.kernel}x{fm.kernel}_s{fm.stride}_{d}")
        )
    return names


class SSDMobileNetV1(nn.Module):
    """SSD-MobileNet-v1 (TF OD API ``ssd_mobilenet_v1``), any width and input size.

    Args:
        alpha: depth multiplier of backbone and extra layers (Google's COCO quant file: 0.75).
        num_classes: class outputs per anchor including background at index 0 (COCO: 91).
        min_depth: floor on every layer's depth (OD API: 16).
        padding: ``"same"`` (TF 'SAME', needed for TF weights) or ``"symmetric"``.
        anchor_generator, box_coder, postprocess: the other three pieces (COCO defaults).
        in_chans: input channels.

    Input: N x 3 x H x W in [-1, 1] (``2 * x / 255 - 1``), the whole image resized (no crop).
    In eval mode ``forward`` returns the post-processed detections (`PostProcess`);
    in training mode it returns the raw head (``box_encodings``, ``class_logits``,
    ``anchors``) for a loss. `raw` gives what an exporter needs.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int = COCO_NUM_CLASSES,
        min_depth: int = SSD_MIN_DEPTH,
        padding: Padding = "same",
        anchor_generator: AnchorGenerator | None = None,
        box_coder: BoxCoder | None = None,
        postprocess: PostProcess | None = None,
        in_chans: int = 3,
        feature_maps: Sequence[FeatureMapDef] = SSD_FEATURE_MAPS,
        predictor_kernel: int = SSD_PREDICTOR_KERNEL,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes (with background) must be an integer >= 2, got {num_classes}")
        self.alpha, self.num_classes, self.min_depth = alpha, num_classes, min_depth
        self.predictor_kernel = predictor_kernel
        self.feature_maps = tuple(feature_maps)
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder()
        self.postprocess = postprocess or PostProcess(num_classes=num_classes - 1)
        if self.anchor_generator.num_layers != len(self.feature_maps):
            raise ConfigError(
                f"{self.anchor_generator.num_layers} anchor layers for {len(self.feature_maps)} feature maps"
            )

        self.backbone = MobileNetV1(alpha, num_classes=0, min_depth=min_depth, padding=padding, in_chans=in_chans)
        channels = {info["name"]: info["num_chs"] for info in self.backbone.feature_info}
        self.backbone_endpoints = [fm.from_layer for fm in self.feature_maps if fm.from_layer]
        if not self.feature_maps[0].from_layer:
            raise ConfigError("the first SSD feature map must come from the backbone")
        for name in self.backbone_endpoints:
            if name not in channels:
                raise ConfigError(f"unknown backbone endpoint {name!r}")

        extras: OrderedDict[str, nn.Module] = OrderedDict()
        map_channels = []
        names = iter(extra_layer_names(alpha, min_depth, self.feature_maps))
        in_ch = 0
        for fm in self.feature_maps:
            if fm.from_layer:
                in_ch = channels[fm.from_layer]
            else:
                reduce_name, conv_name = next(names)
                half = ssd_depth(fm.depth // 2, alpha, min_depth)
                d = ssd_depth(fm.depth, alpha, min_depth)
                extras[reduce_name] = ConvBnAct(in_ch, half, 1, padding=padding)
                extras[conv_name] = ConvBnAct(half, d, fm.kernel, fm.stride, padding=padding)
                in_ch = d
            map_channels.append(in_ch)
        self.extras = nn.ModuleDict(extras)
        self.map_channels = map_channels
        self.box_predictors = nn.ModuleDict({
            f"BoxPredictor_{i}": BoxPredictor(ch, na, num_classes, predictor_kernel, padding)
            for i, (ch, na) in enumerate(zip(map_channels, self.anchor_generator.num_anchors_per_location()))
        })  # fmt: skip
        # TF OD API score_converter SIGMOID (the file's LOGISTIC op); a module, so it can be hooked.
        self.score_converter = nn.Sigmoid()
        self._anchor_cache: dict[tuple, torch.Tensor] = {}
        self._pinned_anchors: dict[tuple[int, int], torch.Tensor] = {}
        self.reset_head_parameters()

        self.pretrained_cfg = default_ssd_cfg(alpha, num_classes, min_depth, arch_cfg=self.arch_cfg())

    # --- declared outputs ----------------------------------------------------------------------

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        k = self.postprocess.detections_per_image
        return (
            OutputSpec("boxes", (-1, k, 4), "float32", "ymin, xmin, ymax, xmax, normalised to [0, 1]"),
            OutputSpec("classes", (-1, k), "float32", "class index without background (COCO: category id - 1)"),
            OutputSpec("scores", (-1, k), "float32", "sigmoid score of the class"),
            OutputSpec("count", (-1,), "float32", "number of valid rows; later rows are zero"),
        )

    def reset_head_parameters(self) -> None:
        """OD API init for extra layers and predictors: truncated normal (std 0.03), zero biases."""
        for m in [*self.extras.modules(), *self.box_predictors.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(
                    m.weight, std=PREDICTOR_INIT_STD, a=-2 * PREDICTOR_INIT_STD, b=2 * PREDICTOR_INIT_STD
                )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    # --- pieces --------------------------------------------------------------------------------

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone maps SSD reads (``Conv2d_11_pointwise``, ``Conv2d_13_pointwise``).

        The only place that touches the backbone, so it can move to ``features_only``.
        """
        maps = self.backbone.forward_endpoints(x, self.backbone_endpoints)
        return [maps[name] for name in self.backbone_endpoints]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All SSD feature maps (19, 10, 5, 3, 2, 1 at 300x300), in predictor order."""
        return self.features_from_backbone(self.backbone_features(x))

    def features_from_backbone(self, backbone_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """All SSD feature maps from the `backbone_features` maps: the extra layers run on them.

        (Lets training with a frozen backbone compute its maps once per image.)
        """
        from_backbone = iter(backbone_maps)
        extras = iter(self.extras.values())
        maps: list[torch.Tensor] = []
        for fm in self.feature_maps:
            if fm.from_layer:
                maps.append(next(from_backbone))
            else:
                reduce, conv = next(extras), next(extras)  # 1x1 to depth/2, then strided conv
                maps.append(conv(reduce(maps[-1])))
        return maps

    def anchors(self, grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:  # fmt: skip
        """Center-size anchors [A, 4] for these feature-map sizes (cached per shape).

        Generated by ``anchor_generator`` unless `pin_anchors` fixed them for this image size.
        """
        key = (tuple(grid_sizes), tuple(image_size), dtype, device)
        cached = self._anchor_cache.get(key)
        if cached is None:
            pinned = self._pinned_anchors.get(tuple(image_size))
            if pinned is not None:
                cached = pinned.to(dtype=dtype, device=device)
            else:
                cached = self.anchor_generator.generate(grid_sizes, image_size[0], image_size[1], dtype, device)
            self._anchor_cache[key] = cached
        return cached

    def pin_anchors(self, anchors: torch.Tensor | None, image_size: tuple[int, int]) -> None:
        """Use ``anchors`` [A, 4] (center-size) for inputs of ``image_size`` instead of generating them.

        For reproducing a file that stores its own (e.g. uint8-rounded) anchors; None unpins.
        """
        size = (int(image_size[0]), int(image_size[1]))
        if anchors is None:
            self._pinned_anchors.pop(size, None)
        else:
            want = self.anchor_generator.generate(self.grid_sizes(size), *size).shape
            if tuple(anchors.shape) != tuple(want):
                raise ConfigError(f"pinned anchors have shape {tuple(anchors.shape)}, the model makes {tuple(want)}")
            self._pinned_anchors[size] = anchors.detach().to(torch.float32).cpu()
        self._anchor_cache.clear()

    def grid_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map sizes (H, W) for an input of ``image_size``, without running the network.

        Every stride-2 layer (TF 'SAME' or symmetric padding alike) maps ``n`` to ``ceil(n / 2)``.
        """
        strides = {info["name"]: info["reduction"] for info in self.backbone.feature_info}
        sizes, last = [], None
        for fm in self.feature_maps:
            if fm.from_layer:
                r = strides[fm.from_layer]
                h, w = image_size
                while r > 1:  # one ceil-halving per stride-2 layer (reductions are powers of 2)
                    h, w, r = -(-h // 2), -(-w // 2), r // 2
                last = (h, w)
            else:
                last = (-(-last[0] // fm.stride), -(-last[1] // fm.stride))
            sizes.append(last)
        return sizes

    def anchors_for(self, image_size: tuple[int, int], dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> torch.Tensor:  # fmt: skip
        """Center-size anchors [A, 4] for an input of ``image_size`` (H, W)."""
        return self.anchors(self.grid_sizes(image_size), image_size, dtype, device)

    def head(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box_encodings [N, A, 4], class_logits [N, A, C])`` over all feature maps."""
        boxes, logits = zip(*(p(m) for p, m in zip(self.box_predictors.values(), maps)))
        return torch.cat(boxes, dim=1), torch.cat(logits, dim=1)

    def _raw_with_anchors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head_with_anchors(self.forward_features(x), tuple(x.shape[-2:]))

    def head_with_anchors(self, maps: Sequence[torch.Tensor], image_size: tuple[int, int],
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(box_encodings, class_logits, anchors)`` of the feature maps of an ``image_size`` input."""
        box, logits = self.head(maps)
        grid = [tuple(m.shape[-2:]) for m in maps]
        return box, logits, self.anchors(grid, image_size, box.dtype, box.device)

    def raw(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box_encodings [N, A, 4], class_scores [N, A, C])``: the inputs of the post-process op.

        Scores are sigmoids (the file's LOGISTIC op); ``logits=True`` gives them before it.
        """
        box, cls, _ = self._raw_with_anchors(x)
        return box, (cls if logits else self.score_converter(cls))

    def decode(self, box_encodings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.box_coder.decode(box_encodings, anchors)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        box, logits, anchors = self._raw_with_anchors(x)
        if self.training:
            return {"box_encodings": box, "class_logits": logits, "anchors": anchors}
        return self.postprocess(self.decode(box, anchors), self.score_converter(logits))

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The declared outputs (``boxes``, ``classes``, ``scores``, ``count``): eval-mode ``forward``."""
        box, logits, anchors = self._raw_with_anchors(x)
        return self.postprocess(self.decode(box, anchors), self.score_converter(logits))

    def arch_cfg(self) -> dict:
        """What rebuilds this exact model (`from_arch_cfg`): widths, anchors, box coder and post-process settings."""
        gen, post = self.anchor_generator, self.postprocess
        return {
            "alpha": self.alpha, "min_depth": self.min_depth, "predictor_kernel": self.predictor_kernel,
            "anchors": {"box_specs": [[list(s) for s in specs] for specs in gen.box_specs],
                        "base_anchor_size": list(gen.base_anchor_size)},
            "box_coder_scales": list(self.box_coder.scales),
            "postprocess": {"num_classes": post.num_classes, "max_detections": post.max_detections,
                            "max_classes_per_detection": post.max_classes_per_detection,
                            "nms_iou_threshold": post.nms_iou_threshold, "nms_score_threshold": post.nms_score_threshold,
                            "use_regular_nms": post.use_regular_nms, "detections_per_class": post.detections_per_class},
        }  # fmt: skip

    @classmethod
    def from_arch_cfg(cls, arch_cfg: dict, num_classes: int = COCO_NUM_CLASSES) -> SSDMobileNetV1:
        """The model `arch_cfg` describes (missing keys: the COCO ``ssd_mobilenet_v1`` defaults)."""
        gen = AnchorGenerator()
        anchors = arch_cfg.get("anchors") or {}
        if anchors.get("box_specs"):
            gen.box_specs = [[(float(s), float(a)) for s, a in specs] for specs in anchors["box_specs"]]
            gen.base_anchor_size = tuple(float(v) for v in anchors.get("base_anchor_size", (1.0, 1.0)))
        post = arch_cfg.get("postprocess")
        return cls(
            alpha=float(arch_cfg.get("alpha", 1.0)), num_classes=num_classes,
            min_depth=int(arch_cfg.get("min_depth", SSD_MIN_DEPTH)), anchor_generator=gen,
            box_coder=BoxCoder(arch_cfg.get("box_coder_scales", (10.0, 10.0, 5.0, 5.0))),
            postprocess=PostProcess(**post) if post else None,
            predictor_kernel=int(arch_cfg.get("predictor_kernel", SSD_PREDICTOR_KERNEL)),
        )  # fmt: skip


def default_ssd_cfg(alpha: float, num_classes: int = COCO_NUM_CLASSES, min_depth: int = SSD_MIN_DEPTH,
                    **changes) -> PretrainedCfg:  # fmt: skip
    """The contract of an SSD-MobileNet-v1: 300x300 whole image, [-1, 1], COCO labels for 91 classes."""
    labels = None
    if num_classes == COCO_NUM_CLASSES:
        from ..data.coco import coco_detection_labels

        labels = coco_detection_labels()
    base = {
        "task": "detect", "arch": "ssd_mobilenet_v1", "arch_cfg": {"alpha": alpha, "min_depth": min_depth},
        "num_classes": num_classes, "label_offset": 1, "labels": labels, "input_size": (3, SSD_RESOLUTION, SSD_RESOLUTION),
        "crop_fraction": 1.0,
    }  # fmt: skip
    return PretrainedCfg(**{**base, **changes})


# --- the TF OD API variable map, as data --------------------------------------------------------

TF_OD_FEATURE_SCOPE = "FeatureExtractor/MobilenetV1"
# (our module prefix, TF scope prefix); the rest of the key maps by SLIM_NAME_RULES (conv/BN)
# or, for predictors, weight -> weights, bias -> biases.
TF_OD_NAME_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.features.", f"{TF_OD_FEATURE_SCOPE}/"),
    ("extras.", f"{TF_OD_FEATURE_SCOPE}/"),
    ("box_predictors.", ""),
)
TF_OD_PREDICTOR_RULES: tuple[tuple[str, str], ...] = (("weight", "weights"), ("bias", "biases"))


def tf_od_name(key: str) -> str:
    """TF OD API variable name for one of our `SSDMobileNetV1` state-dict keys (KeyError if none)."""
    for ours, theirs in TF_OD_NAME_RULES:
        if not key.startswith(ours):
            continue
        rest = key[len(ours) :]
        if ours == "box_predictors.":
            scope, head, suffix = rest.split(".", 2)
            for o, t in TF_OD_PREDICTOR_RULES:
                if suffix == o:
                    return f"{scope}/{head}/{t}"
            break
        scope, _, suffix = rest.partition(".")
        for o, t in SLIM_NAME_RULES:
            if suffix == o:
                if t == "weights" and scope.endswith("_depthwise"):
                    t = "depthwise_weights"
                return f"{theirs}{scope}/{t}"
        break
    raise KeyError(f"no TF OD API name for {key!r}")


def tf_od_name_map(model: nn.Module) -> dict[str, str]:
    """``{our state-dict key: TF OD API variable name}`` for every tensor of ``model``."""
    return {key: tf_od_name(key) for key in model.state_dict()}
