"""failmode: find where vision classifiers fail, explain the failures in words, build debug datasets that fix them."""

__version__ = "0.1.0"
