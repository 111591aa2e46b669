"""Error handling shared by every command: one line on stderr, exit 2 for bad input."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import click

from cld_lake.errors import CldLakeError, command_line_spelling


class LakeLocation(click.ParamType):
    """The LAKE argument: a local directory or an object-store URL (``s3://BUCKET/PATH``,
    ``gs://``, ``memory://``, ``file://``); a URL keeps its ``//``."""

    name = "lake"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        from cld_lake.storage import location

        where = location(value)
        if where.store.process_local:  # memory://: gone when this command exits
            self.fail(
                f"{value}: an in-process store lives only as long as one command; give a local "
                "path or an s3:// or gs:// URL (memory:// is for the Python API)",
                param,
                ctx,
            )
        return where


LAKE = LakeLocation()


class Interrupted(Exception):
    """Ctrl-C inside a command (click would print a blank line and "Aborted!" for it)."""


class Group(click.Group):
    """The ``cld-lake`` group: Ctrl-C inside a command ends it with one line, exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted from exc


# click >= 8.2: a group run without a command raises this, its message the whole help
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


def run_main(cli: click.Group, argv: list[str] | None) -> int:
    try:
        with command_line_spelling():
            result = cli.main(args=argv, prog_name="cld-lake", standalone_mode=False)
        return int(result or 0) if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Abort:
        click.echo("cld-lake: aborted", err=True)
        return 130
    except _NO_ARGS as exc:  # the help as click prints it (stderr, exit 2), not one line
        click.echo(exc.format_message(), err=True)
        return 2
    except click.UsageError as exc:
        where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"cld-lake: error: {' '.join(exc.format_message().split())}{where}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"cld-lake: error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except CldLakeError as exc:
        click.echo(f"cld-lake: error: {exc}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, Interrupted):
        click.echo("cld-lake: interrupted; committed checkpoints are intact", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # disk full, permissions, damaged files, bugs: one line each
        from cld_lake._cli._failures import failure_line

        line, code = failure_line(exc, cli, argv)
        click.echo(line, err=True)
        return code


def echo_json(obj: Any) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, default=str))


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print each ``UserWarning`` raised inside as one line on stderr (``cld-lake: warning:``).

    Other warnings are shown as Python shows them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            mine = [w for w in caught if issubclass(w.category, UserWarning)]
            for w in mine:
                click.echo(f"cld-lake: warning: {' '.join(str(w.message).split())}", err=True)
    for w in caught:
        if not issubclass(w.category, UserWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
