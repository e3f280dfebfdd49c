"""The agent process: its API, scheduler, worker and the services that wire them."""
