"""Metric implementations; see :mod:`eval` for the map."""
