"""Jobs: plan, charge, run generation, persist results, report (shared by the CLI and the server)."""
