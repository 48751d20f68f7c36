"""``import lawn`` stays light: no framework integration (optional extras), no matplotlib or ray, and no
torch._dynamo (it is loaded at the first constrained step that needs it, as torch's own optimizers do)."""

import os
import subprocess
import sys
from pathlib import Path

import lawn

HEAVY = ("lightning", "pytorch_lightning", "transformers", "accelerate", "ray", "matplotlib", "torch._dynamo")


def test_import_lawn_imports_no_framework():
    code = "import sys, torch; before = set(sys.modules); import lawn; print(lawn.__file__); "
    code += "print(*set(sys.modules) - before)"
    src = str(Path(lawn.__file__).parents[1])  # the lawn under test, not another installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    where, added = out.splitlines()[0], out.splitlines()[1].split()
    assert Path(where).resolve() == Path(lawn.__file__).resolve() and "lawn" in added
    heavy = [m for m in added if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"import lawn imported {heavy}"
