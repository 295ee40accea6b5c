"""End-to-end recipes behind the CLI verbs (pretrain, quickstart): plain functions a notebook can call."""
