"""mnv1-coreml: MobileNet V1 from PyTorch to Core ML, with proof that both compute the same."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnv1-coreml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
