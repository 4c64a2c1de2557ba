"""Settings per environment: `dev` (embedded defaults), `test`, `production` (environment only)."""
