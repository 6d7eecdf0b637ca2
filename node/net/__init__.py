"""Network helpers shared by the stages: DIMSE client operations (echo, find, move, get, store) and TLS contexts."""
