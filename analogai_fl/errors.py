"""The project's errors that every layer raises and the commands report, at the bottom of the
import graph: `ConfigError` for bad user input, `CliError` for a command's arguments,
`ArmFailed` for an ablation arm that failed, `WriteFailed` for a file that could not be
written.

Every reader of something the user supplies (a config key, a conf file, a data folder, a run
folder) raises `ConfigError` or a subclass of it (`data.DataNotFoundError`, `idx.IdxError`),
so that the ServerApp and every `analogai-fl` command report it as one line before any work.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration: the message names the key (and file) and what was expected."""


class ArmFailed(RuntimeError):
    """An `analogai-fl ablate` arm's `flwr run` failed; the message says which arm and seed,
    why, that the finished rows are kept and how to continue."""


class WriteFailed(OSError):
    """A file the product writes could not be written (a full disk, a read-only or vanished
    folder): the message names the file and the reason. The file's previous version, if
    any, is left intact and no temporary file remains (`outputs.atomic_write`)."""


class CliError(Exception):
    """A mistake in an `analogai-fl` command's arguments: printed as one line, exit code 2."""
