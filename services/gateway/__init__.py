"""The stack's HTTP face, beside the CDN on its port: the reference platform's queue API and Connect.

Every route is a client of the stack's own gRPC server (`channel.py`): it maps
HTTP onto RPCs and forwards the caller's credentials, so the token rules, the
validation and the errors are the gRPC ones, written once.
"""
