"""schedctl: the operator's command line."""
