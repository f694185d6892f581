"""hier_avg: hierarchical averaging SGD (Hier-AVG) in JAX."""

from hier_avg.errors import UserError

__all__ = ['UserError']
