"""Serving: ``completion(model="alias")`` over the alias registry, the ``Student`` object that
``jd.distill`` returns, and the backends that answer (llama.cpp, transformers, an HTTP model).
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(
    __name__, ["student", "registry", "response", "gguf_backend", "hf_backend", "remote_backend"]
)
