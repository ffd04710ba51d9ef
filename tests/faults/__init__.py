"""Fault-injection tests: the real stack as processes on loopback, one fault under load per test.

See ``tests/faults/stack.py`` for the harness and ``RELIABILITY.md`` for what each test proves.
"""
