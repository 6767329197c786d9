"""The provider's API and nothing about Dagster: the client (client.py), one window's paging
(paging.py), the plan for many windows (plan.py) and its executor (fetch.py), the wire format
(wire.py) and the error codes (errors.py)."""
