"""Foundation: the configuration schema, checkpoints, device/precision/process facts and what
every command line shares. Imports nothing of the project above it."""
