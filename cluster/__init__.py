"""relayrl: cluster package (kept import-light)."""
