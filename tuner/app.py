"""How every rltune command starts and ends: Hydra composes the config, rltune decides what is printed.

Each command (``python -m tuner.train``, ``tune``, ``worker``, ``replay``, ``benchmark``, ``report``) is a
task function wrapped by :func:`hydra_app`. The wrapper gives all of them the same exit codes and the
same output rules:

======  ======================================================================================
code    meaning
======  ======================================================================================
0       done
1       the work failed: training diverged, a benchmark cell or a sweep's workers failed, a bug
        (its traceback is printed)
2       bad input: a configuration value or override, Hydra's own composition errors, a store
        that cannot be used; one line on stderr, and nothing was created
128+N   interrupted by signal N (130 for Ctrl-C, 143 for SIGTERM); finished work is kept
======  ======================================================================================

Hydra prints its own errors with the command line's overrides (``Error executing job with overrides:
[...]``), which can hold a URL with a password. So the task never lets an exception reach Hydra, Hydra's
errors are raised to the wrapper (``HYDRA_FULL_ERROR``) and reported here in one line, and everything
the process writes to stdout, stderr or a log file goes through :func:`tuner.secrets.mask_secrets`.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any, NoReturn

import hydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from algorithms import ConfigError, NonFiniteLossError, UnsupportedSpaceError
from tuner.compose import CONF_DIR
from tuner.secrets import mask_secrets

EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2
# Config groups whose option can also be given as a URL, under this key instead of as the group.
URL_KEYS = {"storage": "storage.url", "tracking": "tracking.uri"}

Task = Callable[[DictConfig], Any]


class CommandFailed(Exception):  # noqa: N818 (reads as what happened, like KeyboardInterrupt)
    """The command's work failed for a reason its message states in full (exit 1, no traceback)."""


def hydra_app(config_name: str, interrupted: str = "") -> Callable[[Task], Callable[[], None]]:
    """Decorator: the task as a Hydra app on ``conf/<config_name>.yaml`` with rltune's exit codes.

    ``interrupted`` is appended to the one line printed when a signal stops the command (what was
    kept and how to resume).
    """

    def decorate(task: Task) -> Callable[[], None]:
        @functools.wraps(task)  # Hydra unwraps it to name the job (its log folder) after the task's module
        def job(cfg: DictConfig) -> Any:
            mask_output()  # again inside the job: Hydra has configured logging, submitit jobs start here
            try:
                return task(cfg)
            except Exception as exc:
                fail_for(exc)
            except KeyboardInterrupt as exc:
                exit_interrupted(exc, interrupted)

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(job)

        def main() -> None:
            mask_output()
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors to us instead of printing them
            try:
                hydra_main()
            except OSError as exc:  # Hydra could not create the job's run directory under paths.runs_dir
                if exc.filename is None:
                    fail_for(exc)
                exit_with(
                    EXIT_CONFIG_ERROR,
                    f"error: cannot write {exc.filename}: {exc.strerror}; "
                    "paths.runs_dir must be a directory this user can write",
                )
            except Exception as exc:
                fail_for(exc)
            except KeyboardInterrupt as exc:
                exit_interrupted(exc, interrupted)

        main.__doc__ = task.__doc__
        return main

    return decorate


def fail_for(exc: Exception) -> NoReturn:
    """Print what went wrong (one line, or a bug's traceback), masked, and exit with its code."""
    if isinstance(exc, ConfigError | UnsupportedSpaceError):
        exit_with(EXIT_CONFIG_ERROR, f"error: {exc}")
    if isinstance(exc, MissingConfigException):
        exit_with(EXIT_CONFIG_ERROR, f"error: {missing_config_message(exc)}")
    if isinstance(exc, OverrideParseException):
        exit_with(
            EXIT_CONFIG_ERROR,
            f"error: cannot parse the override {exc.override!r}: {hydra_error_message(exc)}",
        )
    if isinstance(exc, HydraException | OmegaConfBaseException):
        exit_with(EXIT_CONFIG_ERROR, f"error: {hydra_error_message(exc)}")
    if isinstance(exc, NonFiniteLossError):
        exit_with(EXIT_FAILED, f"error: training diverged: {exc}; the MLflow run is marked FAILED")
    if isinstance(exc, CommandFailed):
        exit_with(EXIT_FAILED, f"error: {exc}")
    exit_with(EXIT_FAILED, "".join(traceback.format_exception(exc)).rstrip())


def missing_config_message(exc: MissingConfigException) -> str:
    """``group=value`` names no file of ``conf/<group>/``: the value and the valid options."""
    missing = str(exc.missing_cfg_file or "")
    group, _, value = missing.partition("/")
    if not value or not exc.options:
        return hydra_error_message(exc)
    hint = f" (a URL goes in {URL_KEYS[group]}=<url>)" if group in URL_KEYS else ""
    return f"{group}={value} is not a config in conf/{group}; choose one of: {', '.join(exc.options)}{hint}"


def hydra_error_message(exc: Exception) -> str:
    """A Hydra or OmegaConf error as one line: its message, and the OmegaConf reason behind it."""
    texts = [str(exc)]
    if isinstance(exc.__cause__, OmegaConfBaseException):
        texts.append(str(exc.__cause__))
    lines = [line.strip().rstrip(".") for text in texts for line in text.splitlines()]
    lines = [line for line in lines if not line.startswith("See https://hydra.cc")]
    # OmegaConf appends "full_key: …" and "object_type=…" lines to its messages: the key is named already.
    kept = [
        line
        for line in lines
        if line and not line.startswith(("full_key:", "object_type=", "reference_type="))
    ]
    return "; ".join(dict.fromkeys(kept)) or type(exc).__name__


def exit_interrupted(exc: KeyboardInterrupt, hint: str = "") -> NoReturn:
    """One line and exit 128 + signal number (``RunTerminated`` carries SIGTERM's; else SIGINT)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    exit_with(128 + signum, f"interrupted by {signal.Signals(signum).name}" + (f": {hint}" if hint else ""))


def exit_with(code: int, message: str) -> NoReturn:
    """Print ``message`` (masked) on stderr and exit with ``code``."""
    print(mask_secrets(message), file=sys.stderr, flush=True)
    sys.exit(code)


class MaskedStream:
    """A text stream that masks URL passwords in everything written through it (see :mod:`tuner.secrets`).

    Everything else (``isatty``, ``fileno``, ``encoding``…) is the wrapped stream's, so rich and logging
    see the terminal or file they would see anyway.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text`` with its secrets masked; returns ``len(text)`` as callers expect."""
        self.stream.write(mask_secrets(text))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        """Write each line, masked."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class MaskSecretsFilter(logging.Filter):
    """A handler filter that masks the formatted message and any traceback of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message (arguments merged in) and traceback text by masked copies."""
        record.msg = mask_secrets(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True


def mask_output() -> None:
    """Route stdout and stderr through :class:`MaskedStream`, and give every logging handler (Hydra's
    log file included) a :class:`MaskSecretsFilter`; safe to call again."""
    originals = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, MaskedStream):
            originals[id(stream)] = masked = MaskedStream(stream)
            setattr(sys, name, masked)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            # Handlers made before this call (a library's, on import) still hold the raw stream.
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and id(stream) in originals:
                handler.setStream(originals[id(stream)])
            if not any(isinstance(f, MaskSecretsFilter) for f in handler.filters):
                handler.addFilter(MaskSecretsFilter())
