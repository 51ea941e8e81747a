"""Random GRPO batches for the model-level loss tests: B prompts x G samples, one prompt
left-padded and one completion cut short, so masks matter."""

from __future__ import annotations

import numpy as np

from r1jax import rl


def random_batch(vocab: int, b: int, g: int, p: int, n: int, *, seed: int,
                 pad_prompt: tuple[int, int], cut_completion: tuple[int, int]) -> rl.Batch:
  """Prompt row `pad_prompt[0]` masked before `pad_prompt[1]`, completion row
  `cut_completion[0]` masked from `cut_completion[1]`; advantages standard normal."""
  rs = np.random.RandomState(seed)
  pmask = np.ones((b, p), bool)
  pmask[pad_prompt[0], :pad_prompt[1]] = False
  cmask = np.ones((b * g, n), bool)
  cmask[cut_completion[0], cut_completion[1]:] = False
  return rl.Batch(rs.randint(0, vocab, (b, p)), pmask, rs.randint(0, vocab, (b * g, n)), cmask,
                    rs.normal(size=b * g).astype(np.float32), None, None)
