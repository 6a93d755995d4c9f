"""The demo fleet (``bin/demo``): a Redis, three backend instances, a storm of clients.

``python -m demo --help`` lists the knobs. The modules: ``processes`` (starting and
stopping every child process, finding or starting a Redis), ``storm`` (the clients and
their report), ``__main__`` (the run and its live display).
"""
