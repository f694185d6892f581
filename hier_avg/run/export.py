"""The trained model: the global average of all learners, as one file.

`final_model.msgpack` in the workdir holds `{'params', 'batch_stats'}` in
flax's msgpack format; `load_model` reads it back as numpy arrays, ready for
`model.apply({'params': ..., 'batch_stats': ...}, x, train=False)`.
"""

import os

from flax import serialization
import jax
import numpy as np

from hier_avg.errors import UserError
from hier_avg.run import distributed, files

MODEL_FILE = 'final_model.msgpack'


def save_model(workdir: str, params, batch_stats) -> str:
  """Writes the model atomically (process 0 only); returns its path."""
  path = os.path.join(workdir, MODEL_FILE)
  if not distributed.is_main_process():
    return path
  model = jax.tree.map(np.asarray, {'params': params,
                                    'batch_stats': batch_stats})
  with files.atomic(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(model))
  return path


def load_model(path: str) -> dict:
  """`{'params': ..., 'batch_stats': ...}` as saved by `save_model`."""
  try:
    with open(path, 'rb') as f:
      return serialization.msgpack_restore(f.read())
  except OSError as e:
    raise UserError(f'cannot read the model {path}: {e.strerror}.') from None
  except ValueError as e:
    raise UserError(f'{path} is not a saved hier_avg model ({e}).') from None
