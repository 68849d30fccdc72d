"""conveyor's steps, one package per stage of the line; ARCHITECTURE.md says what each
may import."""
