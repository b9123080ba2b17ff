"""Public evaluation corpora read from files that pip packages ship; never private data."""
