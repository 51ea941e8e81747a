"""LoRA: low-rank adapters on the policy, the frozen base shared with the reference model.

A targeted weight W (viewed as a matrix [in, out]; `o` has in = heads x head_dim) gets
W + (alpha / rank) A @ B with A [in..., r] (normal, std 1/sqrt(in)) and B [r, out...] (zeros),
so training starts exactly at the base model. The model computes x @ W + x @ A @ (s B)
(`transformer._dense`), never forming the full weight update or its gradient.

The train state holds `{"base": params, "lora": adapters}`: `make_train_step` differentiates
the adapters only, the optimizer state covers the adapters only (`trainable`), and the
reference policy is `base(params)` (no copy). `merge(params)` folds the adapters into plain
params for sampling, evaluation and HF export. Config section `lora`: rank (0 = off), alpha,
targets (a regex matched in full against the weight names, e.g. "q|k|v|o|gate|up|down").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from r1jax import steps

WEIGHTS = ("q", "k", "v", "o", "gate", "up", "down")
IN_DIMS = {"o": 2}  # leading dims of W that x contracts with (1 for the others)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0  # 0: LoRA off (full fine-tuning)
  alpha: float = 16.0
  targets: str = "q|k|v|o|gate|up|down"

  def __post_init__(self):
    if self.rank < 0:
      raise ValueError(f"lora.rank={self.rank} must be >= 0 (0 turns LoRA off)")
    if self.rank and not self.target_names():
      raise ValueError(f"lora.targets={self.targets!r} matches none of {WEIGHTS}")

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def target_names(self) -> tuple[str, ...]:
    try:
      pat = re.compile(self.targets)
    except re.error as e:
      raise ValueError(f"lora.targets={self.targets!r} is not a regex: {e}") from None
    return tuple(n for n in WEIGHTS if pat.fullmatch(n))


def from_config(section: Mapping[str, Any] | None) -> LoraConfig:
  return LoraConfig(**dict(section or {}))


def check_config(c: Any) -> LoraConfig:
  """An RL config's `lora` section, checked in one place before anything is written: its
  values (`LoraConfig`), and what LoRA cannot be combined with (PPO's critic)."""
  lcfg = from_config(c.lora)
  if lcfg.enabled and c.rl.algorithm == "ppo":
    raise ValueError("lora.rank > 0 with rl.algorithm='ppo': the PPO critic starts from full "
                     "weights and does not take LoRA adapters; use one or the other")
  return lcfg


def _layers(params: Any) -> list:
  layers = params["layers"]
  return [layers[k] for k in sorted(layers)] if isinstance(layers, dict) else list(layers)


def _like(layers_container: Any, items: list) -> Any:
  return dict(enumerate(items)) if isinstance(layers_container, dict) else items


def init(params: Any, lcfg: LoraConfig, rng: jax.Array) -> dict:
  """Adapters {"layers": [{name: {"a", "b"}}]} for the targeted weights, float32."""
  layers = _layers(params)
  keys = jax.random.split(rng, len(layers) * len(WEIGHTS)).reshape(len(layers), len(WEIGHTS))
  out = []
  for i, layer in enumerate(layers):
    ad = {}
    for j, name in enumerate(WEIGHTS):
      if name not in lcfg.target_names() or name not in layer:  # MoE layers: no gate/up/down
        continue
      shape = layer[name].shape
      k = IN_DIMS.get(name, 1)
      fan_in = math.prod(shape[:k])
      a = jax.random.normal(keys[i, j], shape[:k] + (lcfg.rank,), jnp.float32) / math.sqrt(fan_in)
      ad[name] = {"a": a, "b": jnp.zeros((lcfg.rank,) + shape[k:], jnp.float32)}
    out.append(ad)
  return {"layers": _like(params["layers"], out)}


def delta(adapter: Mapping[str, jax.Array], name: str, scale: float) -> jax.Array:
  """(alpha / r) A @ B in the weight's shape."""
  del name  # A [in..., r] @ B [r, out...] is the weight's shape for every target
  return scale * jnp.tensordot(adapter["a"], adapter["b"], axes=1)


def combine(base: Any, adapters: Any, lcfg: LoraConfig) -> Any:
  """Params the model runs with the adapters unmerged: each targeted layer weight `w` gains
  `w_lora_a` = A and `w_lora_b` = (alpha/r) B (gradients reach A and B, not the base)."""
  layers = []
  for layer, ad in zip(_layers(base), _layers(adapters)):
    layer = dict(layer)
    for name, ab in ad.items():
      layer[name + "_lora_a"] = ab["a"]
      layer[name + "_lora_b"] = lcfg.scale * ab["b"]
    layers.append(layer)
  return dict(base, layers=_like(base["layers"], layers))


def merge(params: Any, lcfg: LoraConfig) -> Any:
  """Plain model params: the base (train-state `{"base", "lora"}` form) with W + (alpha/r) AB
  folded in. Identity when LoRA is off."""
  if not lcfg.enabled:
    return params
  base, adapters = params["base"], params["lora"]
  layers = []
  for layer, ad in zip(_layers(base), _layers(adapters)):
    layer = dict(layer)
    for name, ab in ad.items():
      w = layer[name]
      layer[name] = (w.astype(jnp.float32) + delta(ab, name, lcfg.scale)).astype(w.dtype)
    layers.append(layer)
  return dict(base, layers=_like(base["layers"], layers))


def base(params: Any, lcfg: LoraConfig) -> Any:
  """The frozen base (the reference policy) of a LoRA train state's params."""
  return params["base"] if lcfg.enabled else params


def wrap_params(params: Any, lcfg: LoraConfig, rng: jax.Array, sharding: Any = None) -> Any:
  """Train-state params: `{"base": params, "lora": adapters}` with LoRA on, else `params`.
  The adapters are small: placed whole on every device (`sharding`, e.g. replicated)."""
  if not lcfg.enabled:
    return params
  adapters = init(params, lcfg, rng)
  if sharding is not None:
    adapters = jax.device_put(adapters, sharding)
  return {"base": params, "lora": adapters}


def policy_fn(lcfg: LoraConfig) -> Callable[[Any], Any]:
  """Train-state params -> plain model params for sampling (a jitted merge; identity if off)."""
  if not lcfg.enabled:
    return lambda params: params
  return jax.jit(functools.partial(merge, lcfg=lcfg))


def abstract_params(param_shapes: Any, lcfg: LoraConfig, sharding: Any = None) -> Any:
  """ShapeDtypeStructs of the train-state params (to restore a checkpoint, then `merge`), the
  adapters placed by `sharding` (e.g. replicated) when given."""
  if not lcfg.enabled:
    return param_shapes
  ad = jax.eval_shape(lambda: init(param_shapes, lcfg, jax.random.key(0)))
  ad = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), ad)
  return {"base": param_shapes, "lora": ad}


def trainable(lcfg: LoraConfig) -> Callable[[Any], Any]:
  """Train-state params -> the part the optimizer updates (the adapters with LoRA on)."""
  return (lambda params: params["lora"]) if lcfg.enabled else (lambda params: params)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, n_micro: int = 1,
                    micro_weight: Callable | None = None,
                    lcfg: LoraConfig = LoraConfig(),
                    post_update: Callable[[Any, dict], tuple[Any, dict]] | None = None
                    ) -> Callable:
  """`steps.make_train_step` for `loss_fn(model_params, batch)`; with LoRA on, gradients,
  optimizer state and updates cover the adapters only (the base is an input, never
  differentiated, so no base-sized gradient buffer exists) and the base passes through,
  changed only by `post_update(base, metrics)` (router-bias balancing lives in the base)."""
  if not lcfg.enabled:
    return steps.make_train_step(loss_fn, tx, n_micro, micro_weight, post_update)

  def train_step(state: steps.TrainState, batch: Any):
    base = state.params["base"]
    inner = steps.make_train_step(lambda ad, mb: loss_fn(combine(base, ad, lcfg), mb), tx,
                                  n_micro, micro_weight)
    out, metrics = inner(state._replace(params=state.params["lora"]), batch)
    if post_update is not None:  # sees `nonfinite_skipped`: a skipped step changes nothing
      base, metrics = post_update(base, metrics)
    return out._replace(params={"base": base, "lora": out.params}), metrics
  return train_step
