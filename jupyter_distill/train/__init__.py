"""BOND training of a LoRA student: the loss, the student loader, step engines and the trainer.

Submodules, imported on demand so ``import jupyter_distill.train.bond`` stays cheap:

- :mod:`.bond`: :func:`~jupyter_distill.train.bond.bond_loss`, the one loss every engine optimises.
- :mod:`.student`: :func:`~jupyter_distill.train.student.load_student` (map keys, HF folders, GGUF).
- :mod:`.engines`: the :class:`~jupyter_distill.train.engines.StepEngine` protocol and the plain
  PEFT engine; :mod:`.choice`: :func:`~jupyter_distill.train.choice.select_engine`, which picks the
  CUDA fast path of :mod:`jupyter_distill.train.fast` when it imports.
- :mod:`.trainer`: :class:`~jupyter_distill.train.trainer.BondTrainer` and its settings.
"""
