"""The `rayfleet` command: one typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

from rayfleet.cli import (
    compress_commands,
    data_commands,
    doctor_commands,
    evaluate_commands,
    jobs_commands,
    plot_commands,
    render_commands,
    run_commands,
    serve_commands,
    spec_commands,
    sweep_commands,
)
from rayfleet.cli.output import set_debug

app = typer.Typer(
    name="rayfleet",
    help="Train, tune and serve PyTorch models on Ray and Kubernetes from one job spec.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    set_debug(debug)


app.command()(spec_commands.validate)
app.command()(spec_commands.schema)
app.command()(run_commands.run)
app.command()(render_commands.render)
app.add_typer(serve_commands.app, name="serve")
app.command()(serve_commands.predict)
app.command()(jobs_commands.submit)
app.add_typer(sweep_commands.app, name="sweep")
app.add_typer(data_commands.app, name="data")
app.add_typer(jobs_commands.app, name="jobs")
app.add_typer(jobs_commands.contexts, name="context")
app.command()(doctor_commands.doctor)
app.command()(plot_commands.plot)
app.command()(compress_commands.compress)
app.command()(evaluate_commands.evaluate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
