"""export and verify as pipelines of named steps (`steps.py`): `export.export_model`,
`verify.verify_model`. This layer sits above the families, verify and serving; none of those
imports it (a family's own command that exports gets `export_model` from the CLI)."""
