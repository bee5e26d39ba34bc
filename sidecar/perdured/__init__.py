"""perdured: the Perdure sidecar.

It owns every SQL query, the scheduling of jobs onto connected workers, retries
with backoff, leases and crash recovery. SDKs talk to it over the gRPC contract
in proto/perdure/v1.
"""

__version__ = "0.1.0"
