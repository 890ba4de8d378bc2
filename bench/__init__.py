"""Benchmarks for fastserver: ``python -m bench --help``.

Deliberately imports nothing: the server runner must decide which module is
``socketserver`` before anything imports it.
"""
