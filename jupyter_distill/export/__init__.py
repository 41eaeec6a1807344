"""Export: merge the LoRA adapter, write and quantize GGUF (llama.cpp's own converter), check the
exported model agrees with the trained one, and write the model card.
"""

from jupyter_distill.core.reexport import reexport

__getattr__, __dir__ = reexport(__name__, ["gguf", "merge", "check", "card", "converter"])
