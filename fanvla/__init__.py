"""fanvla: demonstrations on a JAKA MiniCobo + RealSense D455 -> FAN-SFT finetuned OpenVLA -> scored evaluation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fanvla")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
