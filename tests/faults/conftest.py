"""The trained run that several fault tests read (one training for all of them)."""

import pytest
from fault_helpers import tiny_config

from patchcontrast.pipeline import train


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A 2-step tiny CUT run (``run/checkpoints/step_00000002.pt``) and its built-in data in
    ``cache`` (2 test images per domain). Tests must not change it: copy it first."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(root / "cache"))
        train(tiny_config(root / "run", "train.max_steps=2"))
    return root
