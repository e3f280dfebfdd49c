"""The pure rules: records, specs, transitions, placement, signatures, names, messages. No I/O."""
