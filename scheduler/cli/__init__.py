"""``valueflow``: the scheduler's command line (plans and enqueues work; workers do it).

One module per command group; each command is thin over library functions.
"""

from __future__ import annotations

import sys

import click

from schemas.settings import ConfigError


class Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # only a module a command loaded can have raised its error: nothing is imported here
            jobs_mod, kombu_exc = sys.modules.get("scheduler.jobs"), sys.modules.get("kombu.exceptions")
            if jobs_mod is not None and isinstance(exc, jobs_mod.TasksNotSent):
                raise click.ClickException(str(exc)) from None
            if kombu_exc is not None and isinstance(exc, kombu_exc.OperationalError):  # the broker, wherever met
                from scheduler.cli.common import unreachable

                raise unreachable("broker", exc) from None
            raise


@click.group(cls=Main)
@click.version_option(package_name="valueflow", prog_name="valueflow")
def main() -> None:
    """ValueFlow: measure and steer how strongly text expresses human values."""


def _register() -> None:
    from scheduler.cli import hives, jobs, report, score, servers, steer, study, vidb

    for cmd in [*servers.COMMANDS, score.score, jobs.jobs, vidb.vidb, hives.hives, study.study, steer.steer, report.report]:
        main.add_command(cmd)


_register()
