"""Analysis helpers behind the scripts of ``tools/analysis``."""
