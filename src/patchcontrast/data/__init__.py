"""Datasets: image folders in the CycleGAN/CUT layout, aligned label/photo pairs, the built-in
generated sets (unpaired and paired), downloads."""

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
from .generated_paired import GENERATED_LABEL_NC, render_paired_sample, write_generated_paired
from .paired import PALETTES, PairedDataset, colours_to_labels, resolve_palette, split_pair

__all__ = [
    "DATASETS",
    "GENERATED_LABEL_NC",
    "PALETTES",
    "PairedDataset",
    "colours_to_labels",
    "render_paired_sample",
    "resolve_palette",
    "split_pair",
    "write_generated_paired",
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
