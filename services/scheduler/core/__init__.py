"""Pure scheduler logic: no I/O, no clock, no globals. Table-tested in tests/scheduler."""
