"""What an operator sees and steers around a worker: ECS protection, metrics, logs, scaling.

Imports :mod:`sqstaskmaster.sqs` and :mod:`sqstaskmaster.errors` only, so the
worker and the 0.0.11 Provisioner can both use it.
"""
