"""Datasets: image folders in the CycleGAN/CUT layout, the built-in generated set, downloads."""

from .download import DATASETS, DownloadError, download_dataset
from .folders import (
    IMAGE_EXTENSIONS,
    CropParams,
    ResizeAndCrop,
    SingleFolderDataset,
    UnalignedDataset,
    build_transform,
    check_images,
    list_images,
    load_image,
)
from .generated import GeneratedUnpaired, render_sample, write_generated_dataset

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "CropParams",
    "DownloadError",
    "GeneratedUnpaired",
    "ResizeAndCrop",
    "SingleFolderDataset",
    "UnalignedDataset",
    "build_transform",
    "check_images",
    "download_dataset",
    "list_images",
    "load_image",
    "render_sample",
    "write_generated_dataset",
]
