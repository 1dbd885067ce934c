"""Stand-ins for hardware this machine may lack, for tests and benchmarks; nothing in a run imports them."""
