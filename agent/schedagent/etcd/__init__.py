"""etcd: the typed store, TLS, watch mirrors, the lease session, the election, job records."""
