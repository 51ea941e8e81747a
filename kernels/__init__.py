"""Fused kernels for r1jax (installed as `r1jax.kernels`).

`token_logprobs` computes per-token log-probabilities (and optionally entropy)
of the LM head without materialising [tokens, vocab] logits; implementations:
chunked XLA scan, Pallas TPU (Mosaic), Pallas GPU (Triton). The full-logits
`naive_token_logprobs` is the reference it is tested against.

This folder is only ever the package `r1jax.kernels`. Run from the repository
root (where `python -m` and `python -m pytest` put the current directory first
on `sys.path`), Python would also find it as a top-level `kernels` and shadow
Hugging Face's `kernels` package, which transformers >= 5 imports. So when it
is imported under that name, it hands the name over to the installed package
(or fails as if there were none) before running any of its own code.
"""
if __name__ == "kernels":
  def _hand_over():
    import importlib.machinery
    import importlib.util
    import os
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None:
      del sys.modules["kernels"]
      raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ "
                                "folder is r1jax.kernels)", name="kernels")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules["kernels"]
      raise
  _hand_over()
else:
  from .logprob import token_logprobs
  from .reference import naive_token_logprobs

  __all__ = ["token_logprobs", "naive_token_logprobs"]
