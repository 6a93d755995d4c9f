"""What operators and platforms read: the health routes (:mod:`.health`), Prometheus
metrics (:mod:`.metrics`), the ``coordinator`` command (:mod:`.arguments` parses, and
only then :mod:`.cli` runs, printing through :mod:`.render`) and the live dashboard
(:mod:`.dashboard`)."""
