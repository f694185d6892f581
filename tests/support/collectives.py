"""Collectives counted in a compiled program's HLO text."""

import re


def count_collectives(kind, step_fn, *args) -> int:
  """Ops of `kind` ('all-reduce', 'all-gather') in `step_fn` compiled for
  `args`, each async pair (`-start`/`-done`) counted once."""
  hlo = step_fn.lower(*args).compile().as_text()
  return len(re.findall(rf'= \S+ {kind}(?:-start)?\(', hlo))


def count_all_reduces(step_fn, *args) -> int:
  return count_collectives('all-reduce', step_fn, *args)
