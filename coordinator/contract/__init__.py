"""The contract: what goes over Redis and the wire, written once.

Every key and channel name (:mod:`.keys`), the states and events (:mod:`.phases`), the
instance record (:mod:`.record`), the event messages (:mod:`.events`), signing
(:mod:`.signing`) and what a refused client is told (:mod:`.rejection`). Every writer
and reader in the package, and docs/redis-contract.md, follow these modules.
"""
