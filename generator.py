"""Original import path: ``from generator import Generator``."""

from ssd300.generator import Generator  # noqa: F401
