"""What instances share in Redis: the records (:mod:`.registry`), the fleet view
(:mod:`.view`) and the fleet-wide cap on held connections (:mod:`.leases`)."""
