"""The install's shape: our kernels/ folder is only `r1jax.kernels`, never a top-level `kernels`.

Run from the repository root (where `python -m` puts the current directory on `sys.path`),
`import kernels` must give Hugging Face's installed package, which transformers >= 5 imports;
a top-level `kernels` found in our folder broke every transformers import (issue 20).
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "kernels")


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_import_kernels_from_root_is_the_installed_package_not_our_folder():
  r = _run("import sys, os, kernels, r1jax.kernels as rk\n"
           "assert sys.path[0] == '', sys.path[:2]\n"  # the root is first, as under python -m
           "print(os.path.dirname(os.path.abspath(kernels.__file__)))\n"
           "print(os.path.dirname(os.path.abspath(rk.__file__)))\n"
           "print(callable(rk.token_logprobs), hasattr(kernels, 'token_logprobs'))")
  assert r.returncode == 0, r.stderr
  hf_dir, ours_dir, flags = r.stdout.split("\n")[:3]
  assert os.path.realpath(hf_dir) != os.path.realpath(OURS)
  assert "site-packages" in hf_dir
  assert os.path.realpath(ours_dir) == os.path.realpath(OURS)  # editable install: this folder
  assert flags == "True False"


def test_import_kernels_without_the_installed_package_fails_cleanly():
  # -S: no site-packages, so no Hugging Face `kernels`; the root still comes first on sys.path.
  r = _run("import sys; sys.path.insert(0, '')\n"
           "try:\n  import kernels\nexcept ModuleNotFoundError as e:\n  print('missing', e.name)\n"
           "else:\n  print('found', kernels.__file__)\n"
           "print('kernels' in sys.modules)", "-S")
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["missing", "kernels", "False"]


def test_transformers_modules_that_import_kernels_load_from_root():
  r = _run("import transformers.activations, transformers.integrations.hub_kernels as hk\n"
           "from transformers.utils import is_kernels_available\n"
           "import kernels\nprint(is_kernels_available(), kernels.__name__)")
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["True", "kernels"]


def test_wheel_install_has_r1jax_kernels_and_no_top_level_kernels(tmp_path):
  """Built as a wheel, kernels/ lands inside the r1jax package only."""
  wheels, target = tmp_path / "wheels", tmp_path / "site"
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(wheels), ROOT],
                         capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = wheels.glob("r1jax-*.whl")
  import zipfile
  names = zipfile.ZipFile(wheel).namelist()
  assert "r1jax/kernels/__init__.py" in names and "r1jax/kernels/sharded.py" in names
  assert not any(n.startswith("kernels/") for n in names)
  inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                         str(target), str(wheel)], capture_output=True, text=True, timeout=600)
  assert inst.returncode == 0, inst.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=str(target))
  r = subprocess.run([sys.executable, "-c", "import r1jax.kernels as k; "
                      "print(k.__file__); print(callable(k.token_logprobs))"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  path, ok = r.stdout.split()
  assert path.startswith(str(target)) and ok == "True"
