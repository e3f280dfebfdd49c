"""This host: running commands, measuring capacity, journald, sd_notify."""
