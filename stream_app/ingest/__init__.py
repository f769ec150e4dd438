"""Raw bytes to a valid event or a dead letter: the event schema and parser, log readers,
the dead-letter record, pseudonymisation, and checks of command-line inputs."""
