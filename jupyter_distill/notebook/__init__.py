"""The notebook front end: ``%%distill`` magics, the run dashboard, the review widget and plots.

Everything here may import the rest of the package; nothing in the package imports this
(``load_ipython_extension`` and the pipeline's review handler load it lazily), so the core runs
without IPython or ipywidgets.
"""
