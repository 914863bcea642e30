"""CLI tests. A package (unlike the other test folders) because test_cancel.py and
test_events.py mirror mpstate/cli and would otherwise collide with tests/store's modules of the
same names under pytest's default import mode."""
