"""The real test bed: every part a test talks to runs for real, started and stopped here.

Each part lives in a module of its own (``kube``, ``dns``, ``rtpengine``, ``sipp``, ...) built on
:mod:`tests.testbed.process`, which starts a program, waits until it is really ready, keeps its
log, and stops it. See docs/testing.md.
"""
