"""SQS itself: its limits and message fields, the 0.0.11 wire format, clients, and sending.

Everything that talks to SQS goes through this subpackage. It is the bottom
layer: it imports nothing of the package but :mod:`sqstaskmaster.errors`.
"""
