"""The Redis layer (private): the client (:mod:`.client`), where a namespace lives
(:mod:`.topology`: one server, a cluster's slot, a Sentinel's master), a bounded pub/sub
connection (:mod:`.pubsub`) and the subscription loop that survives outages
(:mod:`.subscription`)."""
