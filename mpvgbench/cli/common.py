"""Shared pieces of the command line: the group, error handling, the --db option.

Every user error (an :class:`~mpvgbench.errors.MpvgbenchError`: a bad spec, an unknown model, a
missing dataset, a newer database) ends as one line on stderr and exit code 2; nothing is written
to the database before the input is valid. Any other exception is a bug: its traceback is shown,
with one line saying where to report it, and the exit code is 1.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mpvgbench.errors import MpvgbenchError

if TYPE_CHECKING:
    from mpvgbench.spec import Spec
    from mpvgbench.store import Store

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DB = "results.db"
DEFAULT_RUNS_DIR = "runs"


class UserError(click.ClickException):
    """One line, exit code 2, no traceback."""

    exit_code = 2


BUG_REPORT_LINE = (
    "mpvgbench: this is a bug, not bad input; please report it with the traceback above "
    "and the command you ran (mpvgbench --version)"
)


def user_errors(func: F) -> F:
    """One line and exit 2 for a MpvgbenchError; a traceback, a bug-report line and exit 1 else."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            end_quietly_on_closed_pipe()
        except MpvgbenchError as error:
            raise UserError(" ".join(str(error).split("\n")[0:1]) or type(error).__name__) from None
        except Exception:
            traceback.print_exc()
            click.echo(BUG_REPORT_LINE, err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: running jobs were stopped; rerun the same command to resume them", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def end_quietly_on_closed_pipe() -> None:
    """``mpvgbench status | head -1``: the reader left; say nothing more and exit 141 (SIGPIPE's
    exit status), as a shell tool would. stdout now points at /dev/null so that the final flush at
    exit cannot raise again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(141)


def db_option(func: F) -> F:
    return click.option(
        "--db",
        envvar="MPVGBENCH_DB",
        default=None,
        metavar="URL|PATH",
        help=f"Results database: a SQLite path or any SQLAlchemy URL (env MPVGBENCH_DB; default ./{DEFAULT_DB}).",
    )(func)


def open_store(db: str | None, spec: Spec | None = None, *, must_exist: bool = False) -> Store:
    """The results database of ``--db`` (else the spec's ``results.db``, else ./results.db).

    ``must_exist``: for the commands that only read (report, status, logs, analyze, cancel,
    ``run --dry-run``): a missing database is a one-line error and nothing is created, migrated
    or converted (docs/architecture.md, Store). Otherwise (``run``) it is created when missing.
    """
    from mpvgbench.store import Store

    target = db or (spec.results.db if spec is not None and spec.results and spec.results.db else None) or DEFAULT_DB
    try:
        if "://" not in target:
            Path(target).exists()  # a name too long for the file system, and the like, fails here
    except OSError as exc:
        raise UserError(f"results database {target[:80]}...: {exc.strerror}; check the --db path") from None
    # a missing database (must_exist) is the store's one-line MissingDatabaseError
    return Store(target, create=not must_exist)


def resolve_runs_root(runs_dir: str | None, spec: Spec | None) -> Path:
    if runs_dir:
        return Path(runs_dir)
    if spec is not None and spec.results and spec.results.runs_dir:
        return Path(spec.results.runs_dir)
    return Path(DEFAULT_RUNS_DIR)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mpvgbench")
def cli() -> None:
    """Benchmark position-embedding methods (Default, LaPE, PVG, MPVG) in vision transformers.

    \b
    Quick start (CPU, sklearn's digits, about two minutes):
      mpvgbench run experiments/quickstart.yaml
      mpvgbench report
    """
