"""The Jupyter server extension: REST for the Distill lab panel and an OpenAI-compatible endpoint.

Enabled by default through ``jupyter-config/server-config/jupyter_distill.json`` (installed into
``etc/jupyter/jupyter_server_config.d``). Configure the run store it shows with
``c.DistillServer.workdir`` or ``$JUPYTER_DISTILL_WORKDIR`` (default ``.distill`` under the
server's root dir). Nothing in the package imports this module: it is a front end.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.server.handlers import DistillContext, DistillServer, handlers

__all__ = ["DistillServer", "_load_jupyter_server_extension"]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Register the handlers; the context (workdir, stores) lives in the tornado settings."""
    settings = DistillServer(parent=server_app)
    web_app = server_app.web_app
    web_app.settings["jupyter_distill"] = DistillContext(settings, server_app.root_dir)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    server_app.log.info(
        "jupyter-distill: serving runs from %s and aliases at %sjupyter-distill/v1",
        settings.resolve_workdir(server_app.root_dir),
        web_app.settings["base_url"],
    )
