"""User tools for tests/test_multiturn.py, imported by name in a worker process."""
import time


def echo(text: str = "") -> str:
  return f"echo: {text}"


def hang(seconds: float = 60.0) -> str:
  time.sleep(seconds)
  return "never"
