"""The ``yarnconv`` group: signals, and turning every failure into one line on stderr.

Commands live one per module (``*_cmd.py``); each parses, calls one entry of
:mod:`yarnconv.api` and prints. Results go to stdout (``--json`` for machines); errors are one
line on stderr (Click's own usage errors included), with the exit codes :mod:`yarnconv.errors` lists:
1 bad input or environment, 2 usage, 3 a requested check failed, 143 SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from typing import Any

import click

from yarnconv import __version__
from yarnconv.errors import EXIT_CHECK_FAILED, EXIT_USAGE, CheckFailed, UsageError, YarnconvError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Terminated(BaseException):
    """SIGTERM (timeout, docker stop, a cancelled CI job): unwinds like Ctrl-C so scratch is removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def os_error_line(exc: OSError) -> str:
    """An environment error (disk full, permissions, paths) as one line naming the path and the fix."""
    where = exc.filename or "the output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        import shutil

        room = ""
        if exc.filename:  # without a path, the free space of some other directory would mislead
            here = os.path.dirname(os.path.abspath(str(where)))
            while not os.path.isdir(here) and here != os.path.dirname(here):  # the scratch dir is gone by now
                here = os.path.dirname(here)
            with contextlib.suppress(OSError):
                room = f", {shutil.disk_usage(here).free / 1e6:.1f} MB free there"
        return f"no space left on device while writing {where}{room} (free some space or choose another -o; nothing was kept)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where} (check its permissions, or choose another path)"
    if exc.errno == errno.EROFS:
        return f"read-only file system: {where} (choose a writable -o)"
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {where} (choose a shorter -o)"
    return f"{exc.strerror or exc}: {where} (check the path)"


# command name -> module under yarnconv.cli; imported only when that command runs (start-up cost)
COMMANDS = {"demo": "demo_cmd", "eval": "eval_cmd", "export": "export_cmd", "extend": "extend_cmd", "hints": "hints_cmd", "inspect": "inspect_cmd", "push": "push_cmd", "run": "run_cmd", "verify": "verify_cmd"}


class _Group(click.Group):
    """Loads commands on demand; turns library errors into one line, and unexpected ones into one
    line plus a debug hint."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        import importlib

        from yarnconv.api import route_help

        module = importlib.import_module(f"yarnconv.cli.{COMMANDS[cmd_name]}")
        command: click.Command = getattr(module, cmd_name, None) or getattr(module, f"{cmd_name}_")
        if command.epilog is None:  # the route table, once: which settings each route refuses
            command.epilog = route_help(cmd_name)
        return command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's usage errors as one line naming the problem and where the help is (Click prints four)."""
        kwargs.pop("standalone_mode", None)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f"{exc.ctx.command_path} --help" if exc.ctx else "yarnconv --help"
            click.echo(f"Error: {exc.format_message().rstrip('.')} (see {where})", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(exc.one_line()) from None
        except CheckFailed as exc:
            click.echo(f"Error: {exc.one_line()}", err=True)
            sys.exit(EXIT_CHECK_FAILED)
        except YarnconvError as exc:
            raise click.ClickException(exc.one_line()) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Terminated:
            click.echo("Error: terminated by SIGTERM; partial output was removed", err=True)
            sys.exit(143)
        except BrokenPipeError:
            # the reader went away (`| head`): nothing left to say, and no traceback at exit
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), sys.stdout.fileno())
            sys.exit(1)
        except RecursionError:
            raise click.ClickException("input nested too deeply to read (is it a real config file?)") from None
        except OSError as exc:
            if os.environ.get("YARNCONV_DEBUG"):
                raise
            raise click.ClickException(os_error_line(exc)) from None
        except Exception as exc:  # a bug: keep the one-line promise, offer the traceback
            if os.environ.get("YARNCONV_DEBUG"):
                raise
            raise click.ClickException(f"internal error: {type(exc).__name__}: {exc} (set YARNCONV_DEBUG=1 for the traceback)") from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="yarnconv")
def main() -> None:
    """Extend a RoPE model's context with YaRN, in a checkpoint every runtime reads the same way.

    \b
    Examples:
      yarnconv inspect ./llama-2-7b
      yarnconv extend ./llama-2-7b --scale 16 -o llama-2-7b-yarn-64k
      yarnconv extend Qwen/Qwen2.5-7B-Instruct --target-context 131072 -o qwen-128k
      yarnconv run smollm2-135m-32k -o smollm2-32k
      yarnconv hints smollm2-32k
      yarnconv eval smollm2-32k --lengths 2k,8k,32k
      yarnconv push smollm2-32k me/SmolLM2-135M-Instruct-YaRN-32k --dry-run
      yarnconv demo
    """
    if hasattr(signal, "SIGTERM"):
        with contextlib.suppress(ValueError):  # not the main thread (embedded use): leave signals alone
            signal.signal(signal.SIGTERM, _on_sigterm)

