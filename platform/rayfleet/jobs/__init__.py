"""Ray Jobs API side of rayfleet: submit specs to a running Ray cluster, follow, stop and list
them, and keep each run's record in storage current (`rayfleet submit`, `rayfleet jobs`)."""
