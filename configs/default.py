r"""Every config key hier_avg reads, at its default.

Each key is declared once, with its default, meaning, check and whether it
may change on resume, in hier_avg/config_keys.py; print them all with

  python -m hier_avg.config_keys

The other files in configs/ start from this one and override what they need.
Launch any of them as

  python launch.py --config=configs/cifar10.py --workdir=/tmp/run \
      --config.hier.k1=8 --config.opt.lr=0.05
"""

from hier_avg import config_keys


# The algorithm presets every data set's config offers (`:kavg`, `:sync`).
ALGORITHM_PRESETS = ('', 'kavg', 'sync')


def apply_preset(c, arg, presets=ALGORITHM_PRESETS):
  """Checks `arg` against `presets` and applies 'kavg' or 'sync' to `c`.

  '' keeps Hier-AVG as configured; presets of the caller's own are left to
  it. Returns `arg` ('' for None).
  """
  arg = arg or ''
  if arg not in presets:
    raise ValueError(f'unknown preset {arg!r}; choose one of {presets}')
  if arg == 'kavg':
    # K-AVG (local SGD): one level, every learner averages every K steps.
    c.hier.group_size = 1
    c.hier.k1, c.hier.k2 = 16, 1
  elif arg == 'sync':
    # Synchronous SGD: averaging after every step == gradient all-reduce.
    c.hier.k1, c.hier.k2 = 1, 1
  return arg


def get_config(arg=None):
  """Every key at its default: see hier_avg/config_keys.py for each one."""
  del arg
  return config_keys.defaults()
