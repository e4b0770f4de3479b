"""Network architectures as plain torch modules (no files read here; see :mod:`ghostmesh_daemon.readers`)."""
