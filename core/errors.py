"""The project's errors. Each carries the exit code the CLI uses: 2 for bad usage or config, 1 otherwise."""


class GraineError(Exception):
    """Base class: a failure the user can act on, reported without a traceback."""

    exit_code = 1


class ConfigError(GraineError):
    """A configuration key, value or override is wrong; raised before anything runs or is submitted."""

    exit_code = 2


class LockError(GraineError):
    """Another pipeline holds the run directory."""


class StageError(GraineError):
    """A stage or one of its tasks failed; the message names the log and the last error lines."""


class DataError(GraineError):
    """Input or intermediate data is inconsistent (wrong tokenizer, truncated shard, bad index)."""


class CheckpointError(GraineError):
    """No valid checkpoint can be loaded, or one is damaged."""
