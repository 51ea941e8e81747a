"""Fused kernels for r1jax (installed as `r1jax.kernels`).

`token_logprobs` computes per-token log-probabilities (and optionally entropy)
of the LM head without materialising [tokens, vocab] logits; implementations:
chunked XLA scan, Pallas TPU (Mosaic), Pallas GPU (Triton). The full-logits
`naive_token_logprobs` is the reference it is tested against.
"""
from .logprob import token_logprobs
from .reference import naive_token_logprobs

__all__ = ["token_logprobs", "naive_token_logprobs"]
