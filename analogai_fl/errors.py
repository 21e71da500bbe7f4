"""The project's error for bad user input, at the bottom of the import graph.

Every reader of something the user supplies (a config key, a conf file, a data folder, a run
folder) raises `ConfigError` or a subclass of it (`data.DataNotFoundError`, `idx.IdxError`),
so that the ServerApp and every `analogai-fl` command report it as one line before any work.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration: the message names the key (and file) and what was expected."""
