"""``python -m ghostmesh_daemon``: the ``ghostmesh`` command without its console script."""

from .cli import entry_point

entry_point()
