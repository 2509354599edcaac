"""Platform: event bus, object store, jobs, records, settings, telemetry, service bootstrap."""
