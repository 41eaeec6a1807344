"""The base every stage stands on: configuration, the run store, events, the teacher-terms policy,
the model map, datasets, errors, hashing, the runtime (threads, devices) and the run folder.

Nothing here imports a stage, the pipeline or a front end (the import-linter contract checks it).
"""
