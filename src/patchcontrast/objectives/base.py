"""The contract between a training method (an objective) and the generic Trainer.

An objective owns its networks and computes its losses; it knows nothing about optimisers,
schedules, checkpoints or logging. The Trainer knows nothing about GANs or contrastive losses: it
runs, every iteration, ``prepare(batch)`` once and then each :class:`Phase` in order — compute
``loss(phase)``, backward, step that phase's optimiser — then ``after_step()`` and finally
``release()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class Phase:
    """One optimisation step of an iteration; GAN alternation is a list of these.

    Attributes:
        name: phase name, e.g. ``"D"`` or ``"G"``; passed to :meth:`Objective.loss`.
        modules: names of the objective's sub-modules whose parameters this phase's optimiser
            updates (one Adam per phase).
        frozen: sub-modules whose parameters get ``requires_grad=False`` while this phase's loss
            is computed and back-propagated (e.g. D during the G step), so no gradient is wasted.
        lr, betas: Adam hyper-parameters of this phase.
        every: run this phase every ``every`` iterations (1 = always).
    """

    name: str
    modules: tuple[str, ...]
    frozen: tuple[str, ...] = ()
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    every: int = 1


class Objective(nn.Module):
    """Base class of training methods (CUT family, SPADE family, ...).

    Sub-classes register their networks as attributes (so ``state_dict`` covers them), define
    ``phases`` and implement the four methods below. Batches are dicts of tensors (plus paths).
    """

    phases: tuple[Phase, ...] = ()

    def prepare(self, batch: dict) -> None:
        """Run the forward pass shared by all phases of this iteration and keep what they need."""
        raise NotImplementedError

    def loss(self, phase: str) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss to minimise in ``phase`` and named statistics to log (plain floats)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the tensors kept by :meth:`prepare` (end of iteration)."""

    def after_step(self) -> None:
        """Called once per iteration after its last phase stepped (e.g. to move an average
        of the weights); nothing by default."""

    def exclude_from_state(self, prefix: str) -> None:
        """Leave the entries under ``prefix`` (e.g. ``"vgg."``, a frozen pretrained network that
        is rebuilt from its weight source) out of ``state_dict`` and accept their absence when
        loading, so checkpoints stay small and hold only what training changes."""

        def drop(module: nn.Module, state: dict, base: str, local_metadata: dict) -> None:
            for key in [k for k in state if k.startswith(base + prefix)]:
                del state[key]

        def allow_missing(module: nn.Module, keys) -> None:
            keys.missing_keys[:] = [k for k in keys.missing_keys if not k.startswith(prefix)]

        self._register_state_dict_hook(drop)
        self.register_load_state_dict_post_hook(allow_missing)

    def samples(self, batch: dict) -> dict[str, Tensor]:
        """Images for the sample grid, each ``(B, C, H, W)`` in ``[-1, 1]``, columns in order
        (e.g. input | translation | identity). Called under ``torch.no_grad()``."""
        raise NotImplementedError
