"""The quick start: an offline, embedded default for the whole user journey."""
