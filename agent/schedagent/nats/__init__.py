"""NATS: the one connection path and the JetStream bus."""
