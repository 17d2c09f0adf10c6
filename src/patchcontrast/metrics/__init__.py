"""Evaluation metrics: FID and KID (standard Inception through pytorch-fid), SWD (Progressive
GAN / MoNCE), content and domain scores on the built-in generated data, Cityscapes-protocol
segmentation scores for any user-supplied model."""

from .content import (
    content_score,
    detect_objects,
    domain_classifier,
    domain_score,
    mask_iou,
)
from .fid import (
    InceptionFeatures,
    MissingWeightsError,
    extract_features,
    feature_statistics,
    fid_from_folders,
    frechet_distance,
    kid,
)
from .segmentation import (
    confusion_matrix,
    load_segmentation_model,
    scores_from_confusion,
    segmentation_metrics,
)
from .swd import swd, swd_from_folders

__all__ = [
    "InceptionFeatures",
    "MissingWeightsError",
    "extract_features",
    "feature_statistics",
    "fid_from_folders",
    "frechet_distance",
    "kid",
    "confusion_matrix",
    "content_score",
    "detect_objects",
    "domain_classifier",
    "domain_score",
    "load_segmentation_model",
    "mask_iou",
    "scores_from_confusion",
    "segmentation_metrics",
    "swd",
    "swd_from_folders",
]
