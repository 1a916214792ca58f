"""The beat sweeps (bodies in `commands.sweeps`)."""
