"""`python -m rayfleet`: the CLI without relying on the console script (what a submitted job's
entrypoint runs, since the package may arrive through the runtime_env, not be installed)."""

from rayfleet.cli.main import main

main()
