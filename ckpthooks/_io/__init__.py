"""Storage: CheckpointIO backends, path helpers, hashing and weights-only safety checks."""
