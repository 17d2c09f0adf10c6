"""torch.hub entry points of patchcontrast.

    translator = torch.hub.load("/path/to/patchcontrast", "translator", source="local",
                                model_dir="MODEL_DIR")

``MODEL_DIR`` is a local folder written by ``patchcontrast export``; nothing is downloaded but
this repository (for a GitHub source).
"""

import sys
from pathlib import Path

# what importing patchcontrast.translator needs, checked by torch.hub before anything is imported
dependencies = ["torch", "torchvision", "safetensors", "numpy", "PIL", "scipy", "tqdm"]

# the package lives in src/: a repository that torch.hub downloaded is not installed
_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from patchcontrast.translator import Translator  # noqa: E402


def translator(model_dir: str, device: str = "cpu") -> Translator:
    """The :class:`~patchcontrast.translator.Translator` of an exported model folder (eval
    mode): ``translator(images)`` translates ``(B, C, H, W)`` images in ``[-1, 1]``."""
    return Translator.from_pretrained(model_dir, device=device)
