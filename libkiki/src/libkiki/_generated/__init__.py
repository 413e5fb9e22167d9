"""Generated code; see scripts/gen."""
