"""The README's promises: it opens with the two commands, and its library example runs."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("\n## ")


def test_readme_library_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert re.fullmatch(r"MoNCE \d+\.\d{4}  PatchNCE \d+\.\d{4}\n", out)
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in namespace["queries"])
    assert all(k.grad is None for k in namespace["keys"])
    per_anchor = namespace["per_anchor"]
    assert per_anchor.shape == (2, 256) and torch.isfinite(per_anchor).all()


def test_readme_loss_table_lists_the_registry():
    from patchcontrast.losses import CONTRASTIVE_LOSSES

    for name in CONTRASTIVE_LOSSES:
        assert f"| `{name}` |" in README
