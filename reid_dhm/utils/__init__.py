"""Small shared helpers: atomic file writes, checkpoints, devices, seeding."""
