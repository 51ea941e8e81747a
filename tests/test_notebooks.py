"""Every notebook in notebooks/ runs top to bottom.

Notebooks that read a run directory get `R1JAX_WORKDIR`: a small one written by the trainer's
own `MetricsWriter` (so no training inside the test); the others run a tiny model.
"""

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  assert any(p.endswith("advantages_across_devices.ipynb") for p in NOTEBOOKS)


def _run_dir(path):
  from r1jax.metrics import MetricsWriter
  w = MetricsWriter(str(path))
  for step in (1, 2, 3):
    w.write(step, dict(reward_mean=0.1 * step, accuracy=0.05 * step, format_rate=0.5, kl=0.01,
                       completion_len_mean=10.0 + step, reflection_rate=0.0, loss=-0.1))
    w.write_samples(step, [dict(prompt="Calculate 1 + 2.", completion="<think> 3 </think>",
                                reference="3", reward=float(step % 2), advantage=0.5,
                                length=7)])
  for step in (0, 2):
    w.write(step, {"pass@1": 0.25, "format_rate": 0.5, "completion_len_mean": 11.0},
            filename="eval.jsonl")
  w.close()
  return str(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, tmp_path):
  # The kernel inherits this environment: this checkout first on the path.
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("R1JAX_WORKDIR", _run_dir(tmp_path))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
