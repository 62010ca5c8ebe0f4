"""relayrl: actors package (kept import-light)."""
