"""patchcontrast: contrastive image-to-image translation (PatchNCE, WeightNCE, MoNCE, PUT)."""

__version__ = "0.1.0"
