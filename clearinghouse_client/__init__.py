"""Clearinghouse client: a Python API (`Client`) and the `clearinghouse` command line tool.

Pure Python on `httpx`; it does not import Django or the service's code."""

from .client import ClearinghouseError, Client, Release, parse_ref

__all__ = ["ClearinghouseError", "Client", "Release", "parse_ref"]
__version__ = "0.1.0"
