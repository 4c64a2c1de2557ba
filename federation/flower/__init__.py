"""Flower apps (ServerApp + ClientApp) that run the training core across members' machines.

No Django in this subpackage: it runs on members' SuperNodes and in the SuperLink's ServerApp
process, neither of which has (or should have) the clearinghouse's web service installed.

- ``settings``: the job's run configuration (validated) and the client's node configuration.
- ``client_app``: the ClientApp (``query`` / ``train`` / ``evaluate`` handlers).
- ``server_app``: the ServerApp (participant selection, rounds, dropouts, recording, outputs).
- ``reporting``: pluggable per-round reporters (JSON lines, HTTP callback).
- ``preflight``: the members' check of their data and model (``python -m federation.flower.preflight``).
- ``local``: start a SuperLink and SuperNodes as local subprocesses (tests, benchmarks, demos).
"""
