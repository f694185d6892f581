"""What kind of value a config key or a file holds: bools are not numbers.

Python counts True as 1; a config value or a JSON field that says True
where a count belongs is a mistake, not a one.
"""

import numbers


def is_integer(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)
