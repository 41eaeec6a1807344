"""The Jupyter server extension: REST for the Distill lab panel and an OpenAI-compatible endpoint.

Enabled by default through ``jupyter-config/server-config/jupyter_distill.json`` (installed into
``etc/jupyter/jupyter_server_config.d``). The run folder it shows is the one run-folder setting
(:mod:`jupyter_distill.core.runfolder`: ``$JUPYTER_DISTILL_WORKDIR``, default ``.distill``) resolved
under the server's root dir, or ``c.DistillServer.workdir``; the absolute folder is exported to
the kernels the server starts, so ``%%distill`` cells write where the panel reads. The panel can
switch to another existing folder under the root (or ``c.DistillServer.allowed_workdirs``) for the
server's session (:mod:`jupyter_distill.server.workdir`). GGUF aliases
are generated in supervised worker processes (``c.DistillServer.model_workers``, see
:mod:`jupyter_distill.server.worker`), so a crash in llama.cpp costs one request a 503, never the
server. Nothing in the package imports this module: it is a front end.
"""

from __future__ import annotations

from typing import Any

from jupyter_distill.server.handlers import DistillContext, DistillServer, handlers
from jupyter_distill.server.workdir import share_run_folder

__all__ = ["DistillServer", "_load_jupyter_server_extension", "share_run_folder"]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Register the handlers; the context (workdir, stores) lives in the tornado settings."""
    settings = DistillServer(parent=server_app)
    web_app = server_app.web_app
    context = web_app.settings["jupyter_distill"] = DistillContext(settings, server_app.root_dir)
    share_run_folder(context.workdir)
    _stop_with_server(server_app, context)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    server_app.log.info(
        "jupyter-distill: serving runs from %s and aliases at %sjupyter-distill/v1",
        settings.resolve_workdir(server_app.root_dir),
        web_app.settings["base_url"],
    )


def _stop_with_server(server_app: Any, context: DistillContext) -> None:
    """Stop the model worker processes when the server shuts down.

    A module extension gets no shutdown call from jupyter_server (only ``ExtensionApp``s do), so
    the server's own extension clean-up step is wrapped. Should that ever be skipped, the workers
    still end with the server: they are daemon processes and exit when their pipe closes.
    """
    original = server_app.cleanup_extensions

    async def cleanup_extensions() -> None:
        context.shutdown()
        await original()

    server_app.cleanup_extensions = cleanup_extensions
