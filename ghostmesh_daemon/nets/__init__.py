"""Network architectures as plain torch modules, built from what a reader in :mod:`ghostmesh_daemon.readers` returns
(a `from_file` helper only hands a path to its reader)."""
