"""TotalRegistrator Node: the PACS processing node (receive, route, find priors, register, send).

One sub-package per stage, data flowing one way (see docs/CONTRACTS.md): receive → route → priors → work →
dispatch, over store (database), net (DIMSE, TLS) and ops (metrics, logging); web (console) and commands (CLI) on
top; :mod:`node.service` composes them.
"""
from importlib.metadata import version as _version

#: the node's version: the one in pyproject.toml (package metadata), written into every DICOM output
__version__ = _version("totalregistrator-node")
