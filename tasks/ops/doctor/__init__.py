"""`conveyor doctor`: checks (what is broken) and repairs (what can be put right safely)."""
