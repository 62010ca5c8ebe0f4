"""relayrl: learner package (kept import-light)."""
