"""Networks and training losses of the First Order Motion Model (no I/O, no CLI)."""
