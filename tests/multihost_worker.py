"""One process of a multi-process CPU run of the tiny trainer (tests/test_train.py).

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS WORKDIR

With NUM_PROCESSES > 1 the processes meet through jax.distributed (gloo collectives on
CPU), as the trainer's --distributed does on TPU/GPU hosts; the global mesh is (2, 2, 1)
either way, so the run must match a single process with 4 devices.
"""

import os
import sys

pid, nproc, port, ndev, workdir = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                   int(sys.argv[4]), sys.argv[5])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", ndev)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if nproc > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)

from configs import r1_zero  # noqa: E402
from r1jax import train as train_lib  # noqa: E402

c = r1_zero.get_config("tiny")
c.unlock()
c.mesh.shape = (2, 2, 1)
c.train.num_steps = 2
c.train.eval_every = 2
c.train.checkpoint_every = 2
train_lib.train(c, workdir)
print(f"process {pid} done", flush=True)
