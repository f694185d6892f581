"""What the tests share: devices, tiny engines, the reference, the launcher.

Imports nothing itself: `tests/conftest.py` reads `support.devices` before
jax may be imported.
"""
