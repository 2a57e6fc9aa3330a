"""Scripts for the repository, not shipped in the wheel (the wheel packages mvlm_magic only)."""
