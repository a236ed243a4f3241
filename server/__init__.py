"""The Trainwire server: gRPC servicers, domain services, the SQL store, the job queue and workers.

Nothing here is imported by `trainwire.engine` or `trainwire.client`.
"""
