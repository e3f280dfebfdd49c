"""`schedctl ui`: a web console on the admin host, over the operator's own NATS client."""
