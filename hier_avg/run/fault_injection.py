"""For tests: a process that kills itself at a given step (as torchft's
`EventInjector`), so that real failures can be tested on one machine.

`HIER_AVG_INJECT_FAULT='process=1,step=6,when=during,once=PATH'` makes
process 1 SIGKILL itself at the round that ends with step 6:

- `when=between`: once that round has finished everywhere (its
  collectives done): the others see it gone at their next collective.
- `when=during`: instead of taking part in that round, after `hold_s`
  (default 2) seconds in which the others have entered the round's
  collectives and wait for it there. (gloo sees the connection close:
  the others fail at once.)
- `when=hang`: it never takes part in that round and stays alive, its
  connections open, as a process stuck inside a collective: the others
  wait there until their watchdog (`run/watchdog.py`) ends them (a
  process killed inside a gloo collective has left the others waiting
  so; XLA:CPU cannot cancel one). It ends when process 0 does (JAX's
  coordination service aborts the processes that lose it).

With `once=PATH` the fault fires only while PATH does not exist, and
creates it first, so a restarted process (the same command, the same
environment) runs on. Unset (every real run), nothing here runs.
"""

import dataclasses
import os
import signal
import time

import jax

from hier_avg.errors import UserError, require

VARIABLE = 'HIER_AVG_INJECT_FAULT'
WHEN = ('between', 'during', 'hang')
FORMAT = (f'process=N,step=N,when={"|".join(WHEN)}'
          '[,once=PATH][,hold_s=S]')


@dataclasses.dataclass(frozen=True)
class Fault:
  process: int
  step: int
  when: str           # One of WHEN.
  once: str = ''      # A marker file: fire only while it does not exist.
  hold_s: float = 2.0

  def before(self, round_) -> None:
    """Called before `round_` is dispatched."""
    if self.when in ('during', 'hang') and self._due(round_):
      time.sleep(self.hold_s)
      if self.when == 'hang':
        self._mark()
        while True:
          time.sleep(60)
      self._kill()

  def after(self, round_) -> None:
    """Called once `round_` has finished on every process."""
    if self.when == 'between' and self._due(round_):
      self._kill()

  def _due(self, round_) -> bool:
    return (round_.end == self.step and jax.process_index() == self.process
            and not (self.once and os.path.exists(self.once)))

  def _mark(self) -> None:
    if self.once:
      with open(self.once, 'w'):
        pass

  def _kill(self) -> None:
    self._mark()
    os.kill(os.getpid(), signal.SIGKILL)


def from_environment() -> Fault | None:
  """The fault `HIER_AVG_INJECT_FAULT` asks for; None when unset."""
  text = os.environ.get(VARIABLE)
  if not text:
    return None
  try:
    fields = dict(part.split('=', 1) for part in text.split(','))
    fault = Fault(int(fields.pop('process')), int(fields.pop('step')),
                  fields.pop('when'), fields.pop('once', ''),
                  float(fields.pop('hold_s', 2.0)))
  except (KeyError, ValueError) as e:
    raise UserError(f'{VARIABLE}={text!r} is not {FORMAT}: {e}') from None
  require(not fields and fault.when in WHEN,
          f'{VARIABLE}={text!r}: unknown fields {sorted(fields)} or when '
          f'{fault.when!r}; give {FORMAT}.')
  return fault
