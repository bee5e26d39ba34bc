"""`perdure`: the command line of Perdure. It talks to a perdured sidecar over the gRPC
contract only (and, for `perdure migrate`, to the database through perdured's migrations).

    perdure jobs list --status dead
    perdure jobs show ID
    perdure stats
    perdure doctor
"""

from perdure.cli._main import cli, main

__all__ = ["cli", "main"]
