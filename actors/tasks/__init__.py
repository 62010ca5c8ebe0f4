"""Task definitions (prompt generators and checkers) shipped with relayrl; import-light."""
