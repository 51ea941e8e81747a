"""Reward worker process: `python -m r1jax.rewards.worker`, driven by `RewardPool` over pipes.

Protocol (pickled messages, multiprocessing Connection framing on stdin/stdout):
  parent -> ("init", names, reward_kwargs, memory_mb); worker -> ("ready",)
  parent -> (task_id, name, completion, example);   worker -> (task_id, status, value)
  parent -> None (or EOF): exit.
The real stdout is kept for the protocol and fd 1 is pointed at stderr, so prints from
library code cannot corrupt it. A watchdog thread exits when the parent goes away.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing.connection import Connection


def _watch_parent(parent: int) -> None:
  while True:
    time.sleep(1.0)
    if os.getppid() != parent:
      os._exit(0)


def _limit_memory(memory_mb: int | None) -> None:
  if not memory_mb:
    return
  import resource
  limit = memory_mb * 2**20
  try:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  except (ValueError, OSError):
    pass


def main() -> None:
  recv = Connection(os.dup(0), writable=False)
  send = Connection(os.dup(1), readable=False)
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  os.dup2(2, 1)
  threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

  from r1jax.rewards import pool, registry
  _, names, reward_kwargs, memory_mb = recv.recv()
  fns = {name: pool.bind_reward(name, reward_kwargs.get(name)) for name in names}
  registry.warmup(names)
  _limit_memory(memory_mb)  # after warm-up: lingua's models map a lot of address space
  send.send(("ready",))
  while True:
    try:
      msg = recv.recv()
    except (EOFError, OSError):
      break
    if msg is None:
      break
    task_id, name, completion, example = msg
    status, value = pool.call_reward(fns[name], completion, example)
    send.send((task_id, status, value))
  sys.exit(0)


if __name__ == "__main__":
  main()
