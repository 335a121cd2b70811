"""Runner glue between the config and the libraries (checkpoint, engine, data, models)."""
