"""Ghost Mesh: protect photos from AI identity matching.

The package is a functional core (``engine``, ``targets``) inside thin adapters (``imaging``,
``daemon``, ``cli``). See ``../shared/design.md`` for the data flow and contracts.
"""

__version__ = "0.1.0"
#: Bumped whenever the optimizer's output for the same input and settings changes; the daemon's
#: ledger records it so users can tell which photos were protected by which engine.
ENGINE_VERSION = "3"
