"""The `sdbatch` command: one typer app, one module per command group, one error handler."""
