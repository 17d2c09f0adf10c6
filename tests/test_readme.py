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


def test_relative_links_of_the_docs_resolve():
    """README.md and docs/*.md link result tables and plots by relative path; a renamed or
    regenerated file must not leave a dead link."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
            checked += 1
    assert checked > 10  # the pattern finds the links of docs/results.md
