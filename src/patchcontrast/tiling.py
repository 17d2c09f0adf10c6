"""Translation of images of any size in overlapping tiles (``translate --tile``).

The generators are fully convolutional, but a whole pass keeps several feature maps of the
full image (``ngf`` to ``4 ngf`` channels) in memory at once, which grows with the pixel count
(about 60 bytes per pixel per ``ngf`` channel for the ResNet generator: measured numbers in the
README, section "translate"). :func:`translate_tiled` runs the generator on overlapping tiles
instead and blends their outputs: inside an overlap the two tiles' weights are complementary
raised-cosine ramps (``sin^2`` and ``cos^2`` of the position), so the normalised weights of
every pixel sum to one and a seam fades over the whole overlap.

The result is not the whole pass: instance norm normalises each tile by its own statistics,
and the tile borders see padding where the whole image has content. Tiles of the image's size
or larger give the whole pass exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

# translate tiles a batch above this many pixels (batch x height x width), in tiles of
# AUTO_TILE px: about 2048 x 2048, where a whole pass of the default generator (ngf 64) already
# needs several GB
AUTO_TILE_PIXELS = 2048 * 2048
AUTO_TILE = 1024


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start positions of tiles of ``tile`` px covering ``length`` px with at least ``overlap``
    px shared by neighbours (one tile when ``tile >= length``). Starts are multiples of
    ``multiple`` where possible (the last tile ends at ``length``), so that the tiles sample
    the same grid of the generator's down-samplings as the whole image."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(
            f"the tile overlap must be >= 0 and smaller than the tile ({tile}), got {overlap}"
        )
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    span = length - tile
    starts = [
        min(span, (round(i * span / (count - 1)) // multiple) * multiple) for i in range(count - 1)
    ] + [span]
    return sorted(set(starts))


def ramp_weights(length: int, starts: list[int], tile: int) -> list[Tensor]:
    """The 1-D blending weight of each tile along one axis, over its ``min(tile, length)``
    positions: 1 where no other tile overlaps, a raised-cosine ramp across each overlap with
    a neighbour (the neighbour's ramp is its complement). The weights of all tiles sum to one
    at every position."""
    size = min(tile, length)
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:  # overlap with the previous tile: rises from ~0 to ~1
            o = starts[i - 1] + size - start
            t = (torch.arange(o, dtype=torch.float64) + 0.5) / o
            w[:o] = torch.sin(t * torch.pi / 2) ** 2
        if i + 1 < len(starts):  # overlap with the next tile: falls from ~1 to ~0
            o = start + size - starts[i + 1]
            t = (torch.arange(o, dtype=torch.float64) + 0.5) / o
            w[size - o :] *= torch.cos(t * torch.pi / 2) ** 2
        weights.append(w)
    # where tiles are closer than half a tile, three of them meet: divide by the sum so that the
    # weights still add up to one (a no-op where only two complementary ramps meet)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, weights):
        total[start : start + size] += w
    return [w / total[start : start + size] for start, w in zip(starts, weights)]


def blend_weights(
    height: int, width: int, tile: int, overlap: int, multiple: int = 1
) -> list[tuple[int, int, Tensor]]:
    """Every tile as ``(top, left, weight)``, the weight ``(h, w)`` the product of the two
    axes' ramps. Neighbours in both directions overlap only where two ramps overlap, so these
    also sum to one at every pixel."""
    ys = tile_starts(height, tile, overlap, multiple)
    xs = tile_starts(width, tile, overlap, multiple)
    wy, wx = ramp_weights(height, ys, tile), ramp_weights(width, xs, tile)
    return [
        (y, x, (a[:, None] * b[None, :]).float()) for y, a in zip(ys, wy) for x, b in zip(xs, wx)
    ]


def check_tile(tile: int, overlap: int | None, multiple: int) -> tuple[int, int]:
    """``tile`` rounded down to the generator's size multiple and the overlap (default a
    quarter of the tile, rounded to the multiple); a ValueError for unusable values."""
    if tile < 2 * multiple:
        raise ValueError(
            f"--tile must be at least {2 * multiple} px (twice the generator's "
            f"size multiple {multiple}), got {tile}"
        )
    tile -= tile % multiple
    if overlap is None:
        overlap = (tile // 4) - (tile // 4) % multiple
    if not 0 <= overlap < tile:
        raise ValueError(
            f"--tile-overlap must be >= 0 and smaller than the tile ({tile} px), got {overlap}"
        )
    return tile, overlap


@torch.no_grad()
def translate_tiled(
    translate: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    tile: int,
    overlap: int | None = None,
    multiple: int = 4,
    generator: nn.Module | None = None,
    stats: str = "tile",
) -> Tensor:
    """``translate`` (a ``(B, C, H, W) -> (B, C', H, W)`` function of any size, e.g.
    ``objective.translate``) of ``images`` run on overlapping tiles of ``tile`` px and blended
    (see the module's docstring). ``multiple``: the generator's size multiple
    (``export.size_multiple``); the tile is rounded down to it and the tile starts follow it.
    Integer inputs (label maps) are cut alike. The output is accumulated in float32 on the
    inputs' device.

    ``stats``: ``"tile"``, every instance norm normalises a tile by the tile's own statistics
    (one pass); ``"image"`` (needs ``generator``, the network ``translate`` runs), by the
    whole image's, measured beforehand over the tiles (:class:`WholeImageNorms`): the result
    then matches the whole pass up to the tile borders' padding, for about ``L / 2`` more
    passes' work with ``L`` instance norms (17 for 6 residual blocks).
    """
    if stats not in ("tile", "image"):
        raise ValueError(f"tile statistics must be 'tile' or 'image', got {stats!r}")
    tile, overlap = check_tile(tile, overlap, multiple)
    h, w = images.shape[-2:]
    if tile >= h and tile >= w:
        return translate(images)
    tiles = blend_weights(h, w, tile, overlap, multiple)
    norms = WholeImageNorms(generator) if stats == "image" and generator is not None else None
    if norms is None or not norms.layers:
        return _blend(translate, images, tiles)
    with norms:
        norms.measure(translate, images, tiles)
        return _blend(translate, images, tiles, norms)


def _blend(translate, images: Tensor, tiles: list, norms: WholeImageNorms | None = None) -> Tensor:
    h, w = images.shape[-2:]
    out = weight_sum = None
    for top, left, weight in tiles:
        th, tw = weight.shape
        weight = weight.to(images.device)
        y = translate(images[..., top : top + th, left : left + tw].contiguous())
        if out is None:
            out = torch.zeros(*y.shape[:-2], h, w, dtype=torch.float32, device=y.device)
            weight_sum = torch.zeros(h, w, dtype=torch.float32, device=y.device)
        out[..., top : top + th, left : left + tw] += y.float() * weight
        weight_sum[top : top + th, left : left + tw] += weight
    return (out / weight_sum).to(y.dtype)


class _Stop(Exception):
    """Ends a tile's forward pass after the instance norm being measured."""


class WholeImageNorms:
    """Instance norms that normalise tiles with the statistics of the whole image.

    Instance norm's mean and variance are per image and channel; a tile's own differ from the
    whole image's (a sky tile, a grass tile), which is most of what separates a tiled
    translation from a whole pass. Inside ``with norms:`` every parameter-free
    ``InstanceNorm2d`` of the generator is patched. :meth:`measure` finds the whole image's
    statistics layer by layer: pass ``k`` runs every tile up to the ``k``-th norm only,
    normalising the earlier ones with their measured statistics, and accumulates the ``k``-th
    norm's input moments weighted by the tile's blend weight (resized to the layer's
    resolution, so that tile borders, where padding replaces the neighbouring content, count
    little and every pixel counts once in all). Afterwards every norm normalises with its
    measured statistics. (Measuring all norms in one pass, each with the estimate of the pass
    before, does not converge: an error in an early layer's estimate is amplified by the
    following ones.)
    """

    def __init__(self, generator: nn.Module) -> None:
        self.layers = [
            m
            for m in generator.modules()
            if isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats
        ]
        self.fixed: dict[int, tuple[Tensor, Tensor]] = {}
        self.measuring: int | None = None
        self.weight: Tensor | None = None
        self.sums: list[Tensor] | None = None

    def __enter__(self) -> WholeImageNorms:
        for i, layer in enumerate(self.layers):
            layer.forward = self._forward(i, layer)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            del layer.forward
        self.measuring = None

    def measure(self, translate: Callable[[Tensor], Tensor], images: Tensor, tiles: list) -> None:
        """The statistics of every norm over the whole image, one pass over the tiles each."""
        self.fixed = {}
        for k in range(len(self.layers)):
            self.measuring, self.sums = k, None
            for top, left, weight in tiles:
                self.weight = weight.to(images.device)
                try:
                    th, tw = weight.shape
                    translate(images[..., top : top + th, left : left + tw].contiguous())
                except _Stop:
                    pass
            total, sum_x, sum_xx = self.sums
            mean = sum_x / total
            self.fixed[k] = (mean, (sum_xx / total - mean**2).clamp_min(0))
        self.measuring = self.sums = self.weight = None

    def _forward(self, i: int, layer: nn.InstanceNorm2d):
        def forward(x: Tensor) -> Tensor:
            if i == self.measuring:
                w = nn.functional.interpolate(
                    self.weight[None, None].double(), size=x.shape[-2:], mode="area"
                )[0, 0]
                xd = x.double()
                sums = [w.sum(), (xd * w).sum((-2, -1)), (xd * xd * w).sum((-2, -1))]
                self.sums = sums if self.sums is None else [a + b for a, b in zip(self.sums, sums)]
                raise _Stop
            mean, var = (t.to(x.dtype)[..., None, None] for t in self.fixed[i])
            out = (x - mean) * torch.rsqrt(var + layer.eps)
            if layer.affine:
                out = out * layer.weight[:, None, None] + layer.bias[:, None, None]
            return out

        return forward
