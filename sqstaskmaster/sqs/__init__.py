"""SQS itself: its limits and message fields, the 0.0.11 wire format, clients, the queue
interface, batched calls, and sending.

Everything that talks to SQS goes through this subpackage: :mod:`.queue` is the
one interface (receive, visibility changes, batched deletes and sends, queue
attributes) that the worker, the producer and the command line use, and
:mod:`.batch` the one per-entry retry of batched calls. It is the bottom
layer: it imports nothing of the package but :mod:`sqstaskmaster.errors`.
"""
