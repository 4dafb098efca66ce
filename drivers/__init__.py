"""Hardware drivers: one module per kind, each behind a small interface, each with a ``sim`` backend.

Backends are looked up by name through :mod:`drivers.registry`; a backend's library
(pyscard, OpenCV, gpiozero, …) is imported only when that backend is chosen.
"""
