"""The Flower ServerApp: runs the federation configured by the run config."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.server.federation import run_federation
from fedrec.shared.federated.settings import FederationSettings


def make_server_app(settings: FederationSettings | None = None) -> ServerApp:
    """A ServerApp for ``settings``, or for each run's run config when None."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings or FederationSettings.from_run_config(context.run_config))

    return app


app = make_server_app()
