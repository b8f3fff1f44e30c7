"""The `mace-ase` command: relax, md, eval, fetch, info (and train, registered by mace_ase.cli.train).

Errors are one line on stderr, `Error: ...`: exit status 2 for bad usage (a missing
file, an invalid option), 1 for everything else (unknown model or element, unreadable
file, licence not accepted). `relax` exits 3 when it did not converge and `md` 130 when
stopped with Ctrl-C; both still write what they have. Unexpected exceptions are one line
too. `mace-ase --debug ...` (or MACE_ASE_DEBUG=1) shows the traceback of every exception
raised by mace-ase, ASE or JAX (named errors included); the checks the command line makes
itself (a missing file, a bad option, an unreadable input) stay one line.
"""

from __future__ import annotations

import os
import re
import sys

import click

from .common import one_line

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _explain(error: BaseException) -> str | None:
    """The one-line message for an error the user can act on; None for a bug."""
    from mace_ase.errors import LicenseNotAcceptedError, MaceAseError

    if isinstance(error, LicenseNotAcceptedError):
        return _licence_refusal(str(error))
    if isinstance(error, MaceAseError):
        return one_line(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror or one_line(error)}: {error.filename}"
    if isinstance(error, OSError):
        return one_line(error)
    return None


def _licence_refusal(message: str) -> str:
    """The library's refusal (many lines: the licence summary, the ways to accept) as one CLI line."""
    first = message.splitlines()[0].removesuffix("Licence summary:").strip()
    env = re.search(r"environment variable (MACE_ASE_ACCEPT_LICENSE=\S+)", message)
    record = re.search(r"record it once for this user: (.*), saved in ", message)
    if env is None or record is None:
        return f"{one_line(message)}; or add --accept-license"
    terms = re.search(r"Full terms: (\S+)", message)
    terms = f" Terms: {terms.group(1)}" if terms else ""
    return (
        f"{first} To accept it (non-commercial use only): add --accept-license to this command, "
        f"set {env.group(1)}, or record it once with {record.group(1)}.{terms}"
    )


class MaceAseGroup(click.Group):
    """A click group whose errors are one line (see the module docstring)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as error:
            if ctx.params.get("debug") or os.environ.get("MACE_ASE_DEBUG"):
                raise  # the whole traceback, whatever the error
            message = _explain(error)
            if message is None:
                message = f"unexpected {type(error).__name__}: {one_line(error)} (rerun with `mace-ase --debug` for the traceback)"
            raise click.ClickException(message) from error

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        if args is None:  # the real command line, not an in-process call (click's test runner)
            from .train import restart_with_training_tunables

            restart_with_training_tunables(sys.argv[1:])
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as error:
            click.echo(f"Error: {one_line(error)}", err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=MaceAseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of errors (and log at INFO level).")
@click.version_option(package_name="mace-ase", prog_name="mace-ase")
def main(debug: bool) -> None:
    """MACE interatomic potential (JAX) for ASE: relax, run MD, evaluate, manage weights.

    \b
    Quick start:
      mace-ase relax examples/aspirin.xyz
      mace-ase md examples/aspirin.xyz --steps 200
    """
    if debug:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")


def _register() -> None:
    from .convert import convert
    from .evaluate import evaluate
    from .export_lammps import export_lammps
    from .ipi import ipi
    from .lammps import lammps_command
    from .md import md
    from .models import fetch, info
    from .relax import relax

    for command in (relax, md, evaluate, fetch, info, convert, export_lammps, lammps_command, ipi):
        main.add_command(command)


_register()

from .train import train_command  # noqa: E402  (mace_ase.training's CLI verb)

main.add_command(train_command)

if __name__ == "__main__":
    main()
