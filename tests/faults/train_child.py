"""A training process for tests/faults/test_kill.py to kill: ``python train_child.py RUN_DIR
[--resume] [--pause-in-save STEP]``. 60 iterations of a toy objective that draws from the
global RNG (dropout), about 20 ms each, a checkpoint after every one (keep_last 2) and a sample
grid every 5, so that a kill at a random moment often lands in a file write.

``--pause-in-save STEP``: the checkpoint of that step writes half its bytes to the temporary
file, prints ``mid-write PATH`` and sleeps, so that a kill lands inside the write for sure.
"""

import argparse
import io
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from fault_helpers import Toy, toy_trainer  # noqa: E402

ITERATIONS = 60


class Noisy(Toy):
    """The toy with dropout (a resumed run matches only if the RNG state is restored) and a
    fixed cost per iteration, so that kills at random moments fall inside the run."""

    def prepare(self, batch):
        time.sleep(0.02)
        self.real, self.fake = batch["A"], F.dropout(self.G(batch["A"]), 0.5)


def pause_in_save(step: int) -> None:
    real_save = torch.save
    victim = f"step_{step:08d}.pt"

    def save(obj, f, *args, **kwargs):
        if victim not in getattr(f, "name", ""):
            return real_save(obj, f, *args, **kwargs)
        data = io.BytesIO()
        real_save(obj, data, *args, **kwargs)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        print(f"mid-write {f.name}", flush=True)
        time.sleep(60)  # until killed

    torch.save = save


def build(run_dir: Path):
    """The trainer of this run (also the test's straight run, in the test's own process)."""
    torch.manual_seed(0)  # the same initial weights in the straight run and the killed one
    return toy_trainer(
        run_dir,
        Noisy(),
        n_epochs=ITERATIONS // 4,
        deterministic=True,
        checkpoint_every=1,
        sample_every=5,
        keep_last=2,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-in-save", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the test's straight run
    if args.pause_in_save is not None:
        pause_in_save(args.pause_in_save)
    trainer = build(Path(args.run_dir))
    trainer.fit(resume=args.resume)
    print(f"done {trainer.step}", flush=True)


if __name__ == "__main__":
    main()
