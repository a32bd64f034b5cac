"""The evaluation contract: one `evaluate(view, data_dir, settings)` per evaluator, usable from
a checkpoint (the `evals/` binaries) and from the running train state (`config.eval.evaluators`)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluation_imports_neither_train_nor_data_prep():
    """Layers import downwards only: a fresh interpreter importing every evaluation module
    must not load `medclip_jax.train` or `data_prep`."""
    folder = os.path.join(ROOT, "medclip_jax", "evaluation")
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")
    code = ("import sys\n"
            + "".join(f"import medclip_jax.evaluation.{n}\n" for n in names)
            + "bad = sorted(m for m in sys.modules if m == 'medclip_jax.train' "
              "or m == 'data_prep' or m.startswith('data_prep.'))\n"
              "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == "", f"medclip_jax.evaluation pulls in {out.stdout.strip()}"
