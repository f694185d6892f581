"""JAX's persistent compilation cache, on by default.

A round program of a ResNet compiles for tens of seconds on a GPU and
cnn_small's for seconds on CPU; reruns, resumes and sweep points compile the
same programs again. With the cache they load them instead: same programs,
same results, less time to the first step (benchmarks/README.md has the
cold and warm times). `runtime.compilation_cache` chooses the folder.
"""

import os

import jax

# 'auto': $JAX_COMPILATION_CACHE_DIR when set, else this user folder.
USER_FOLDER = os.path.join('~', '.cache', 'hier_avg', 'jax')
OFF = 'off'


def folder(setting: str) -> str | None:
  """The cache folder `setting` names; None when it is off."""
  if setting == OFF:
    return None
  if setting == 'auto':
    return os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.expanduser(
        USER_FOLDER)
  return os.path.expanduser(setting)


def configure(setting: str) -> str | None:
  """Points JAX at the cache `setting` names (before the first compile).

  Returns the folder in use, None when off. Programs that compile in under
  a second are cached too: on CPU most round programs take a few seconds.
  """
  path = folder(setting)
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is not None:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path
