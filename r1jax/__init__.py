"""r1jax: DeepSeek-R1 training (GRPO, R1 stages, distillation, evaluation) in pure JAX."""

__version__ = "0.1.0"
