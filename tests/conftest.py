"""Test setup: the repo root on sys.path (for `configs`), 1 CPU device unless a test says so."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Nothing in the tests may reach a model hub: every model and tokenizer is made locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
