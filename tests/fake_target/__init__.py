"""A test-only target: proves a new target is one folder (options.py, target.py, lowering.toml)
plus one registry entry (``register_target("fake", "fake_target")``)."""
