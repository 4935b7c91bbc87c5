"""Two minimal plugin modules for the entry-point loading tests."""
