"""``vesalius serve``: exported model packages behind an HTTP service with versions, keys, jobs and monitoring.

Everything lives under the workspace's ``serving/`` folder (:meth:`vesalius.workspace.Workspace.serving_dir`)::

    registry/           the model registry (:mod:`.registry`): registry.json and NAME/vN.vpkg
    keys.json           API keys, hashed (:mod:`.keys`)
    jobs.sqlite3        the jobs (:mod:`.jobs`), SQLite in WAL mode
    jobs/ID/            each job's input, result, shadow result and feedback
    audit.jsonl         who did what, when, with which model version (:mod:`.audit`)

The service runs on the torch-free runtime (:mod:`vesalius.runtime`): ``pip install "vesalius[serve]"``.
"""
