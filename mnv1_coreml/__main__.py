"""``python -m mnv1_coreml`` is the same as the ``mnv1-coreml`` command."""

from .cli import run

run()
