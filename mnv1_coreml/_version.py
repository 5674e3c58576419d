"""The installed distribution's version; a leaf module so that nothing imports the package root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnv1-coreml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
