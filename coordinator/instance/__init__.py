"""One instance's coordinator: its status, its role (owner or follower), its drain.

:mod:`.coordinator` holds the status and the Redis link; :mod:`.owner` runs the startup
phases and publishes them; :mod:`.follower` learns them from Redis; :mod:`.status` is
how a remote status moves the local view; :mod:`.drain` and :mod:`.signals` are what a
shutdown does.
"""
