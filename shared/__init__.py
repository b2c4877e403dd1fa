"""The Cardless platform: what every service stands on (config, db, bus, http, metrics, logs)."""
