"""``valueflow``: the scheduler's command line (plans and enqueues work; workers do it).

One module per command group; each command is thin over library functions.
"""

from __future__ import annotations

import click

from schemas.settings import ConfigError


class Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # imported only on an error: commands that never meet the broker do not load it
            from kombu.exceptions import OperationalError

            from scheduler.cli.common import unreachable
            from scheduler.jobs import TasksNotSent

            if isinstance(exc, TasksNotSent):
                raise click.ClickException(str(exc)) from None
            if isinstance(exc, OperationalError):  # the broker, wherever a command met it
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
