"""schedagent: a distributed job scheduler for fleets of Linux hosts."""

import importlib


def _version() -> str:
    # packaging/build-deb writes _package_version.py into the tree it builds, so an
    # installed agent reports the Debian version it came in (an upgrade shows);
    # a source checkout reports pyproject.toml's.
    try:
        stamped = importlib.import_module(f"{__name__}._package_version")
    except ImportError:
        # Only here: importing it costs ~40 ms, which an installed agent (and its
        # ExecStopPost=, schedagent stop-post) need not pay.
        from importlib import metadata

        try:
            return metadata.version("schedagent")
        except metadata.PackageNotFoundError:
            return "0+unknown"
    return str(stamped.PACKAGE_VERSION)


__version__ = _version()
