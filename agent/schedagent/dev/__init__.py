"""The local development cluster and the invariant checker the tests share."""
