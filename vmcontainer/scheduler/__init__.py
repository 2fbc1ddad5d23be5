"""Scheduling: call scopes (deadlines, cancellation) and the worker pool."""
