"""Segmentation scores of translated images under any segmentation model the user supplies
(docs/design.md §6.3): mIoU, pixel accuracy and mean class accuracy, Cityscapes style.

The papers score label -> photo translations by segmenting the generated photos with a pretrained
network (DRN-D-22 for Cityscapes, a UperNet for ADE20K) and comparing with the input labels; none
of the repos ships that evaluation code, so the protocol here is the standard one, stated exactly:

- One confusion matrix ``C[true, predicted]`` is accumulated over *all* pixels of all images
  (not a mean of per-image scores); pixels whose label is ``ignore_index`` (255, Cityscapes'
  "void") are left out whatever the model predicts there.
- ``resolution="label"`` (default): Cityscapes scores at the label resolution, so the model's
  logits are resized to the label size (bilinear, align_corners=False) before the argmax; labels
  are never interpolated. ``resolution="prediction"`` instead resizes the labels to the logits'
  size with nearest neighbour (the usual shortcut when labels were prepared at another size).
- IoU_c = C_cc / (sum_j C_cj + sum_i C_ic - C_cc); mIoU is the mean over classes whose union is
  non-empty, i.e. present in the ground truth *or* the prediction (a class predicted but absent
  from the labels counts with IoU 0; a class absent from both is undefined and skipped, like
  ``np.nanmean`` in DRN's and most toolkits' code). Class accuracy_c = C_cc / sum_j C_cj over
  classes present in the ground truth; pixel accuracy = trace(C) / sum(C).

The "mAP" of the MoNCE / CUT Cityscapes tables is this mIoU (docs/design.md §6.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Model = str | Path | Callable[[Tensor], Tensor]
Resolution = Literal["label", "prediction"]
RESOLUTIONS = ("label", "prediction")


def load_segmentation_model(model: Model, device: str | torch.device = "cpu") -> Callable:
    """The segmentation model to run, from:

    - a TorchScript file path (``torch.jit.save``): loaded in eval mode on ``device``; a
      ``.pt2`` file is read with ``torch.export.load`` (exported in eval mode);
    - a Python entry point ``"package.module:name"``: ``name`` is a module instance or a
      callable returning logits, or a zero-argument factory (a class or function whose
      signature takes no arguments) that builds one — e.g. a function that loads DRN-D-22 with
      its Cityscapes weights;
    - an ``nn.Module`` (put in eval mode) or any callable, used as is.
    """
    if isinstance(model, str) and ":" in model and not Path(model).exists():
        model = _entry_point(model)
        if isinstance(model, nn.Module):
            return model.to(device).eval()
        return model
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ValueError(
                f"segmentation model file {path} does not exist (expected a "
                "TorchScript file saved with torch.jit.save, or an entry point "
                "'package.module:name')"
            )
        if path.suffix == ".pt2":  # torch.export's format, TorchScript's successor
            return torch.export.load(str(path)).module().to(device)
        return torch.jit.load(str(path), map_location=device).eval()
    if isinstance(model, nn.Module):
        return model.eval()
    if not callable(model):
        raise ValueError(
            "model must be a TorchScript file path or a callable mapping "
            f"(B, 3, H, W) images in [0, 1] to (B, K, H', W') logits, got {model!r}"
        )
    return model


def _entry_point(spec: str) -> Callable:
    """Resolve ``"package.module:name"``; call ``name`` if it is a zero-argument factory."""
    import importlib
    import inspect

    module_name, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load segmentation model entry point {spec!r}: {err}") from None
    if isinstance(target, nn.Module):
        return target
    try:
        takes_nothing = not inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_nothing = False
    if inspect.isclass(target) or takes_nothing:
        target = target()
    if not callable(target):
        raise ValueError(f"entry point {spec!r} gave {type(target).__name__}, not a model")
    return target


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """int64 (K, K) counts ``C[true, predicted]`` over pixels whose target is not ignored.

    ``pred`` and ``target``: integer tensors of one shape.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and labels {tuple(target.shape)} differ")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"labels hold values {sorted(set(bad.unique().tolist()))[:10]} outside "
            f"0..{num_classes - 1} that are not ignore_index={ignore_index}"
        )
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted classes must lie in 0..{num_classes - 1}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes**2)
    return counts.view(num_classes, num_classes).cpu()


def scores_from_confusion(confusion: Tensor) -> dict[str, float | list[float]]:
    """mIoU, pixel accuracy, mean class accuracy (and per-class values, NaN where undefined)
    from a ``C[true, predicted]`` matrix; see the module docstring for the definitions."""
    c = confusion.double()
    tp, true, predicted = c.diagonal(), c.sum(1), c.sum(0)
    union = true + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(true > 0, tp / true.clamp_min(1), nan)
    total = float(c.sum())
    return {
        "miou": float(iou.nanmean()) if total else float("nan"),
        "pixel_accuracy": float(tp.sum()) / total if total else float("nan"),
        "mean_class_accuracy": float(acc.nanmean()) if total else float("nan"),
        "per_class_iou": iou.tolist(),
        "per_class_accuracy": acc.tolist(),
        "num_pixels": int(total),
    }


def _logits(output) -> Tensor:
    """Model output -> logits: a tensor, ``output["out"]`` (torchvision) or ``output[0]`` (DRN)."""
    if isinstance(output, dict):
        if "out" not in output:
            raise ValueError(f"model returned a dict without 'out' (keys {sorted(output)})")
        output = output["out"]
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 4:
        raise ValueError(
            "model must return (B, K, H', W') logits, got "
            f"{tuple(output.shape) if isinstance(output, Tensor) else type(output)}"
        )
    return output


def _as_image(image: Tensor | np.ndarray, i: int) -> Tensor:
    image = torch.as_tensor(image)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"images[{i}] must be (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255
    if not image.is_floating_point():
        raise ValueError(f"images[{i}] must be uint8 or float in [0, 1], got {image.dtype}")
    if image.numel() and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
        raise ValueError(
            f"images[{i}]: float images must be in [0, 1]; map generator outputs with (x + 1) / 2"
        )
    return image.float()


def _batches(images: Sequence, labels: Sequence, batch_size: int):
    """Consecutive (image, label) runs of one image size, at most ``batch_size`` long."""
    run: list[tuple[Tensor, Tensor]] = []
    for i, (image, label) in enumerate(zip(images, labels)):
        image = _as_image(image, i)
        label = label if isinstance(label, Tensor) else torch.as_tensor(np.asarray(label))
        label = label[0] if label.dim() == 3 and label.shape[0] == 1 else label
        if label.dim() != 2:
            raise ValueError(f"labels[{i}] must be (H, W), got {tuple(label.shape)}")
        if run and (len(run) == batch_size or image.shape != run[0][0].shape):
            yield run
            run = []
        run.append((image, label))
    if run:
        yield run


@torch.no_grad()
def segmentation_metrics(
    model: Model,
    images: Tensor | Sequence,
    labels: Tensor | Sequence,
    num_classes: int,
    ignore_index: int = 255,
    *,
    resolution: Resolution = "label",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> dict:
    """Segment ``images`` with ``model`` and score against ``labels`` (module docstring).

    ``model``: TorchScript file path or callable, (B, 3, H, W) float in [0, 1] -> (B, K, H', W')
    logits (or a dict with "out", or a tuple whose first item is the logits). ``images``:
    (N, 3, H, W) uint8 / [0, 1] float tensor or a list of (3, H, W) ones (sizes may differ);
    ``labels``: (N, H, W) integer tensor/array or a list of (H, W) ones. Returns ``miou``,
    ``pixel_accuracy``, ``mean_class_accuracy``, per-class lists, ``num_pixels`` and the
    ``confusion`` matrix. Example::

        segmentation_metrics("drn_d_22_cityscapes.pt", fake_photos, label_maps, num_classes=19)
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label maps")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    run_model = load_segmentation_model(model, device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for run in _batches(images, labels, batch_size):
        logits = _logits(run_model(torch.stack([im for im, _ in run]).to(device)))
        if logits.shape[:2] != (len(run), num_classes):
            raise ValueError(
                f"model returned logits {tuple(logits.shape)} for {len(run)} images;"
                f" expected (B, num_classes={num_classes}, H', W')"
            )
        for scores, (_, label) in zip(logits.float(), run):
            label = label.to(scores.device)
            if resolution == "label" and scores.shape[-2:] != label.shape:
                scores = F.interpolate(
                    scores[None], size=tuple(label.shape), mode="bilinear", align_corners=False
                )[0]
            elif resolution == "prediction" and scores.shape[-2:] != label.shape:
                label = F.interpolate(
                    label[None, None].double(), size=scores.shape[-2:], mode="nearest"
                )[0, 0].long()
            confusion += confusion_matrix(scores.argmax(0), label, num_classes, ignore_index)
    return {**scores_from_confusion(confusion), "confusion": confusion}
