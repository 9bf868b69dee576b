"""The Teams Direct Routing edge: policy on the SIP core, sans-IO (no sockets, ssl or clock).

Each rule lives in one module named for what it does, with a comment citing the Microsoft page or
the seed article's section it comes from (docs/policies.md lists them with their defaults).
"""
