"""The agent's files by default: constants only, so that the CLI reads them without loading more."""

CONFIG = "/etc/schedagent/agent.yaml"
# In the unit's RuntimeDirectory= (tmpfs: gone at a reboot, so what it holds is always
# of this boot), kept across a restart by RuntimeDirectoryPreserve=restart.
HANDOVER = "/run/schedagent/handover.json"
