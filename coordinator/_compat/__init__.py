"""Every private name of a dependency the library touches, and nowhere else.

Each submodule wraps one dependency's internals behind a function of ours, checks the
installed version against the range the suite ran it with, and falls back to public
behaviour outside that range (saying so once in the log). tests/unit/test_package_shape.py
holds every other module of the package to public names only.
"""
